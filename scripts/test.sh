#!/usr/bin/env bash
# The test command of the README (and of .ci/run): installs what the tests
# need, then runs the whole workspace's tests and the Python package's. GENESIS_SOAK=1 scales the soak
# and crash tests up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --no-fail-fast
# The Python package (built into target/pyenv by scripts/setup.sh): the
# guide's snippets and the API, against the binary cargo test just built.
GENESIS_RECOVERY_BIN=target/debug/genesis-recovery target/pyenv/bin/pytest -q python/tests
