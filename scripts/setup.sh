#!/usr/bin/env bash
# Installs what the tests and benchmarks need beyond the Rust toolchain:
# python3 (the independent hostile writer of the capture tests), and the
# sqlite3 and zstd command-line tools (the baselines of the benchmarks),
# and moto[server] (a real S3 server for the object-store tests).
# Safe to run again; installs only what is missing.
set -euo pipefail
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ "${1:-}" = "--bench" ]; then
  command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
  command -v zstd >/dev/null 2>&1 || need+=(zstd)
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
