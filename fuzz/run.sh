#!/usr/bin/env bash
# Fuzzes each archway target for a bounded time, then keeps what was found:
#   - a minimized corpus in tests/data/fuzz/<target>/ (replayed by
#     `cargo test --test fuzz_regressions`; the hand-written seed-* files
#     there are kept as they are),
#   - new crashing inputs in tests/data/fuzz/<target>/crashes/new/, to be
#     triaged into a named class with a test (see tests/fuzz_regressions.rs).
#
# Usage: fuzz/run.sh [TARGET...]      (default: every target)
#   FUZZ_SECONDS  seconds per target (default 60)
#   FUZZ_JOBS     parallel fuzzing processes per target (default 1)
#
# cargo-fuzz needs a nightly compiler; on a stable one RUSTC_BOOTSTRAP=1
# unlocks the -Z flags it uses. The targets reach only loopback (a review
# target's images are checked first); when `unshare` can make a network
# namespace, the fuzzers run in one with nothing but loopback anyway.
set -euo pipefail
cd "$(dirname "$0")"
FUZZ=$(pwd)
DATA=$FUZZ/../tests/data/fuzz
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
JOBS=${FUZZ_JOBS:-1}
ALL_TARGETS=(admission_review image_reference manifest patch)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz/run.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
for target in "${TARGETS[@]}"; do
  cargo fuzz build -O "$target"
done
BIN_DIR=$FUZZ/target/$TRIPLE/release

# Run a command with only loopback networking, if this machine allows it.
sandbox() {
  if unshare --net true 2>/dev/null; then
    unshare --net sh -c 'ip link set lo up 2>/dev/null || true; exec "$@"' sandbox "$@"
  else
    "$@"
  fi
}

max_len() {
  case "$1" in
    admission_review | patch) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

summary=()
for target in "${TARGETS[@]}"; do
  corpus=$FUZZ/corpus/$target
  artifacts=$FUZZ/artifacts/$target
  mkdir -p "$corpus" "$artifacts" "$FUZZ/logs" "$DATA/$target"
  # Seed from the kept corpus (not the crashes).
  find "$DATA/$target" -maxdepth 1 -type f -exec cp -n {} "$corpus/" \;
  log=$FUZZ/logs/$target.log
  echo "fuzz/run.sh: $target for ${SECONDS_PER_TARGET}s ($JOBS job(s)), log in $log"
  started=$(date +%s)
  # Fork mode goes on past a crash, so one run finds more than one.
  sandbox "$BIN_DIR/$target" "$corpus" \
    -fork="$JOBS" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$target")" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || true
  elapsed=$(($(date +%s) - started))

  # Minimize the corpus into the kept one: fuzzer-found files are replaced,
  # seeds stay.
  minimized=$(mktemp -d)
  "$BIN_DIR/$target" -merge=1 -max_len="$(max_len "$target")" "$minimized" "$corpus" \
    >"$FUZZ/logs/$target.merge.log" 2>&1 || true
  find "$DATA/$target" -maxdepth 1 -type f ! -name 'seed-*' -delete
  seeds=$(find "$DATA/$target" -maxdepth 1 -type f -name 'seed-*' -exec sha1sum {} + | cut -d' ' -f1)
  for file in "$minimized"/*; do
    [ -f "$file" ] || continue
    # What a seed already holds is not kept twice.
    if ! grep -qxF "$(sha1sum <"$file" | cut -d' ' -f1)" <<<"$seeds"; then
      cp "$file" "$DATA/$target/"
    fi
  done
  rm -rf "$minimized"

  # New crashing inputs: those not already kept under crashes/.
  known=$(find "$DATA/$target/crashes" -type f -exec sha1sum {} + 2>/dev/null | cut -d' ' -f1 || true)
  new=0
  for crash in "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-* "$artifacts"/slow-unit-*; do
    [ -f "$crash" ] || continue
    sum=$(sha1sum <"$crash" | cut -d' ' -f1)
    if ! grep -qxF "$sum" <<<"$known"; then
      mkdir -p "$DATA/$target/crashes/new"
      cp "$crash" "$DATA/$target/crashes/new/"
      known="$known"$'\n'"$sum"
      new=$((new + 1))
    fi
  done
  # Fork mode reports progress lines: the last `#N` is the executions.
  execs=$({ grep -Eo '^#[0-9]+' "$log" || true; } | tail -1 | tr -d '#')
  kept=$(find "$DATA/$target" -maxdepth 1 -type f | wc -l)
  summary+=("$target: ${elapsed}s, ${execs:-?} executions, corpus kept $kept files, $new new crash input(s)")
done

echo
echo "fuzz/run.sh summary"
printf '  %s\n' "${summary[@]}"
if find "$DATA" -path '*/crashes/new/*' -type f | grep -q .; then
  echo "new crashing inputs to triage:"
  find "$DATA" -path '*/crashes/new/*' -type f | sed 's/^/  /'
  exit 1
fi
