#!/usr/bin/env bash
# Issue 14's attacks against a release `archway serve`, on loopback, with
# the issue's sizes; prints a table (attack, what was sent, archway's
# answer, peak RSS, registry requests). About 3 minutes.
#
#   benches/hostile.sh                 # every attack
#   ONLY=bodies,fanout benches/hostile.sh
#
# Needs docker-registry and skopeo (the tests' harness). Output: $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/hostile}
executables=$(cargo build --release --bin archway --bench hostile \
  --message-format=json-render-diagnostics |
  jq -r 'select(.reason == "compiler-artifact" and .executable != null) | "\(.target.name) \(.executable)"')
exe() { awk -v n="$1" '$1 == n {print $2}' <<<"$executables" | tail -1; }
ARCHWAY=$(exe archway)
HOSTILE=$(exe hostile)
rm -rf "$OUT"
mkdir -p "$OUT"
echo "archway $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')" >&2
args=(--archway "$ARCHWAY" --out "$OUT")
[ -n "${ONLY:-}" ] && args+=(--only "$ONLY")
timeout 900 "$HOSTILE" "${args[@]}" | tee "$OUT/table.md"
