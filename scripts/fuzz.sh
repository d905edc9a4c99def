#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each,
# one target at a time in one process, and fails when any of them finds a
# crash, a panic or a hang, printing the reproducer's path.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      # default 60
#
# Environment: GENESIS_FUZZ_TARGETS="manifest wal" runs only those;
# GENESIS_FUZZ_SANITIZER=address builds with AddressSanitizer (default none:
# the decoders are safe Rust, and what the fuzzing looks for is panics,
# overflows (debug assertions stay on), hangs and huge allocations).
# Installs cargo-fuzz from crates.io when missing; needs the nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs="${1:-60}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2; exit 2 ;;
esac
all_targets="manifest object segment events wal exchange pipeline capture_state"
read -r -a targets <<<"${GENESIS_FUZZ_TARGETS:-$all_targets}"
sanitizer="${GENESIS_FUZZ_SANITIZER:-none}"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzzing needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)..."
  cargo install cargo-fuzz --locked
fi

# Seeds come from real objects (examples/fuzz_seeds.rs); written when missing.
for t in "${targets[@]}"; do
  if [ -z "$(ls -A "fuzz/seeds/$t" 2>/dev/null)" ]; then
    echo "writing seed corpora (examples/fuzz_seeds.rs)..."
    cargo run --quiet --example fuzz_seeds -- fuzz/seeds
    break
  fi
done

cd fuzz
for t in "${targets[@]}"; do
  cargo +nightly fuzz build --sanitizer "$sanitizer" "$t"
done

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" logs
  log="logs/$t.log"
  echo "== fuzz $t for ${secs}s (log: fuzz/$log)"
  # One process (libFuzzer's default; -jobs=1 would be the same in a child
  # process writing its own log). Inputs new to the coverage go to corpus/;
  # a crash, panic, timeout or out-of-memory input goes to artifacts/.
  dict=()
  [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
  if cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
    "${dict[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs)' "$log" | tail -1 || true
  else
    failed+=("$t")
    # The failure's message and stack, without libFuzzer's byte dumps.
    grep -vE '^.{300}' "$log" | tail -40
    unit=$(grep -oE 'Test unit written to \S+' "$log" | tail -1 | sed 's/Test unit written to //' || true)
    case "$unit" in
      '' | /*) ;;
      *) unit="$root/fuzz/${unit#./}" ;;
    esac
    if [ -n "$unit" ]; then
      echo "!! $t failed: reproducer at $unit"
      echo "   reproduce: cd fuzz && cargo +nightly fuzz run --sanitizer $sanitizer $t $unit"
    else
      echo "!! $t failed without a reproducer (see $root/fuzz/$log)"
    fi
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzzing: ${#targets[@]} target(s), ${secs}s each, nothing found"
