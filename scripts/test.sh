#!/usr/bin/env bash
# The test command of the README (and of .ci/run): installs what the tests
# need, then runs the whole workspace's tests. GENESIS_SOAK=1 scales the soak
# and crash tests up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --no-fail-fast
