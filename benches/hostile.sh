#!/usr/bin/env bash
# Issues 14's and 24's attacks against a release `archway serve`, on
# loopback, with the issues' sizes; prints a table (attack, what was sent,
# archway's answer with another namespace's review time where the attack is
# on others, peak RSS, registry requests). About 3 minutes.
#
#   benches/hostile.sh                 # every attack
#   ONLY=bodies,fanout benches/hostile.sh
#   ONLY=drips,sha512,ipv6,indexes benches/hostile.sh   # issue 24's registry rows
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
