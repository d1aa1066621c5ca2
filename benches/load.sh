#!/usr/bin/env bash
# archway under load, side by side with the floor (benches/floor.rs: axum +
# rustls answering every review "allowed, no patch") and the pod floor (the
# same, reading each pod as archway does: the ceiling of archway's ratio),
# against the goals of the issue "Performance: measure and reach the goals".
# Run from anywhere:
#
#   benches/load.sh                          # the real thing (~35 min)
#   DURATION=10 SOAK=60 FILL=2000 benches/load.sh   # a quick pass (~5 min)
#
# Everything is on loopback: a real registry (docker-registry, filled by the
# tests' harness through benches/loadkit.rs), archway (`archway serve`, its
# own certificate from `archway certs`), the floor, and h2load over HTTPS.
# Results, logs and the table go to $OUT (target/load by default).
#
# Knobs (environment):
#   DURATION=60        seconds of each throughput run (h2load -D)
#   SIZES="small typical large"   review bodies (~5, ~15, ~30 KB)
#   PROTOCOLS="h2 h1"  HTTP/2 (H2_CLIENTS connections x H2_STREAMS streams)
#                      and HTTP/1.1 keep-alive (H1_CLIENTS connections)
#   H2_CLIENTS=4 H2_STREAMS=32 H1_CLIENTS=64
#   LATENCY_DURATION=30 LATENCY_RPS=2000   the latency run: a fixed rate,
#                      archway logging every review (server-side elapsed_ms)
#   BURST=1000         concurrent reviews of one uncached image
#   BURST_DELAY_MS=200 how long the (proxied) registry takes per burst manifest
#   FILL=10000         distinct cached images for the memory measurement
#   SOAK=600 SOAK_RPS=2000   the soak (seconds, reviews/s), RSS sampled every 10 s
#   STARTUP_RUNS=20    spawn-to-ready measurements
#   ARCHWAY_ENV=""     extra environment for archway and the floor, e.g.
#                      "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"
#                      to try another allocator without rebuilding
#   PROFILE=0          1: perf record archway and the floor during the
#                      typical h2 throughput run (perf report in $OUT)
#   OUT=target/load
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-60}
SIZES=${SIZES:-small typical large}
PROTOCOLS=${PROTOCOLS:-h2 h1}
H2_CLIENTS=${H2_CLIENTS:-4}
H2_STREAMS=${H2_STREAMS:-32}
H1_CLIENTS=${H1_CLIENTS:-64}
LATENCY_DURATION=${LATENCY_DURATION:-30}
LATENCY_RPS=${LATENCY_RPS:-2000}
BURST=${BURST:-1000}
BURST_DELAY_MS=${BURST_DELAY_MS:-200}
FILL=${FILL:-10000}
SOAK=${SOAK:-600}
SOAK_RPS=${SOAK_RPS:-2000}
STARTUP_RUNS=${STARTUP_RUNS:-20}
PROFILE=${PROFILE:-0}
ARCHWAY_ENV=${ARCHWAY_ENV:-}
OUT=${OUT:-target/load}

log() { printf '[load %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------ tools
missing=()
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "$PROFILE" = 1 ] && ! command -v perf >/dev/null 2>&1; then
  die "PROFILE=1 needs perf (apt-get install linux-perf)"
fi

# ------------------------------------------------------------------ build
log "building (release): archway, the floor and loadkit"
executables=$(cargo build --release --bin archway --bench floor --bench loadkit \
  --message-format=json-render-diagnostics |
  jq -r 'select(.reason == "compiler-artifact" and .executable != null
                and (.target.kind[0] == "bench" or .profile.test == false))
         | "\(.target.name) \(.executable)"')
exe() { awk -v n="$1" '$1 == n {print $2}' <<<"$executables" | tail -1; }
ARCHWAY=$(exe archway)
FLOOR=$(exe floor)
LOADKIT=$(exe loadkit)
[ -x "$ARCHWAY" ] && [ -x "$FLOOR" ] && [ -x "$LOADKIT" ] || die "build did not produce all binaries"

rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/results.txt"
: >"$RESULTS"
result() { printf '%s\n' "$*" >>"$RESULTS"; }

# --------------------------------------------------------------- cleanup
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget() { # drop a pid from the cleanup list
  local keep=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
  pids=("${keep[@]}")
}

stop() { # stop a process we started, by pid
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# ------------------------------------------------ registry, certs, bodies
log "starting the registry (+ $FILL fill tags) through loadkit"
"$LOADKIT" registry --state "$OUT/registry" --fill "$FILL" --burst-delay-ms "$BURST_DELAY_MS" \
  >"$OUT/registry.out" 2>"$OUT/registry.err" &
pids+=($!)
REGISTRY_KIT=$!
for _ in $(seq 600); do
  grep -q '^ready' "$OUT/registry.out" 2>/dev/null && break
  kill -0 "$REGISTRY_KIT" 2>/dev/null || die "loadkit registry exited: $(cat "$OUT/registry.err")"
  sleep 0.5
done
grep -q '^ready' "$OUT/registry.out" || die "registry not ready in 300 s"
# shellcheck disable=SC1091
source "$OUT/registry/registry.env"
log "registry $REGISTRY_HOST, delaying proxy $PROXY_HOST"

"$ARCHWAY" certs --out "$OUT/certs" >/dev/null 2>&1
CERT="$OUT/certs/tls.crt"
KEY="$OUT/certs/tls.key"
CA="$OUT/certs/ca.crt"

"$LOADKIT" bodies --host "$REGISTRY_HOST" --proxy "$PROXY_HOST" --out "$OUT" >"$OUT/bodies.txt"
declare -A BODY_BYTES
while read -r name bytes; do BODY_BYTES[$name]=$bytes; done <"$OUT/bodies.txt"

write_config() { # $1 = file, $2 = cache max entries
  cat >"$1" <<YAML
targetArchitecture: arm64
timeBudget: 2500ms
cache:
  maxEntries: $2
  tagTtl: 1h
  # The memory fill asks for 10,000 new images from one namespace, which
  # the per-namespace budget of registry misses (issue 14, item 9) would
  # throttle after its burst: this bench measures memory, not that budget.
  namespaceMissesPerSecond: 100000
  namespaceMissBurst: 100000
registry:
  insecure: ["$REGISTRY_HOST", "$PROXY_HOST"]
namespaces:
  shop: {mode: enforce, rollout: 50}
server:
  listen: 127.0.0.1:0
  adminListen: 127.0.0.1:0
  certFile: $CERT
  keyFile: $KEY
YAML
}
CONFIG="$OUT/archway.yaml"
write_config "$CONFIG" 10000

# ------------------------------------------------------- start and stop
ARCHWAY_PID=""
ARCHWAY_URL=""
start_archway() { # $1 = name, $2 = log filter, $3 = config
  local name=$1 filter=$2 config=${3:-$CONFIG} logfile="$OUT/archway-$1.log"
  # shellcheck disable=SC2086
  env $ARCHWAY_ENV "$ARCHWAY" --config "$config" --log-format json --log "$filter" serve \
    >/dev/null 2>"$logfile" &
  ARCHWAY_PID=$!
  pids+=("$ARCHWAY_PID")
  local line="" i
  for i in $(seq 200); do
    line=$(grep -m1 '"archway serving"' "$logfile" 2>/dev/null || true)
    [ -n "$line" ] && break
    kill -0 "$ARCHWAY_PID" 2>/dev/null || die "archway ($name) exited: $(cat "$logfile")"
    sleep 0.05
  done
  [ -n "$line" ] || die "archway ($name) did not start"
  local webhook admin
  webhook=$(jq -r '.webhook' <<<"$line")
  admin=$(jq -r '.admin' <<<"$line")
  for i in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/readyz")" = 200 ] && break
    sleep 0.05
  done
  ARCHWAY_URL="https://$webhook/mutate"
  log "archway ($name, --log $filter) on $webhook, pid $ARCHWAY_PID"
}

FLOOR_PID=""
FLOOR_URL=""
start_floor() { # $1 = what it reads: uid (the floor) or pod (the pod floor)
  # shellcheck disable=SC2086
  env $ARCHWAY_ENV "$FLOOR" --listen 127.0.0.1:0 --cert "$CERT" --key "$KEY" --read "$1" \
    >"$OUT/floor-$1.out" 2>"$OUT/floor-$1.err" &
  FLOOR_PID=$!
  pids+=("$FLOOR_PID")
  local i addr=""
  for i in $(seq 200); do
    addr=$(awk '/^floor listening on/ {print $4}' "$OUT/floor-$1.out")
    [ -n "$addr" ] && break
    kill -0 "$FLOOR_PID" 2>/dev/null || die "floor exited: $(cat "$OUT/floor-$1.err")"
    sleep 0.05
  done
  [ -n "$addr" ] || die "floor did not start"
  FLOOR_URL="https://$addr/mutate"
  log "floor (--read $1) on $addr, pid $FLOOR_PID"
}

# ----------------------------------------------------------------- h2load
# run_h2load LABEL URL BODY PROTOCOL SECONDS [RPS_TOTAL] [PID_FOR_CPU]
# Leaves h2load's output in $OUT/h2load-LABEL.txt, its per-request log in
# $OUT/h2load-LABEL.log, and sets RPS, ERRORS, CPU_US (server CPU per
# review), CLIENT_US (h2load's CPU per request) and LOAD_AVG (the machine's
# 1-minute load average when the run started: other work skews results).
run_h2load() {
  local label=$1 url=$2 body=$3 proto=$4 seconds=$5 rate=${6:-} pid=${7:-}
  local args=(-t 1 -D "$seconds" --warm-up-time 2 -d "$body"
    -H 'content-type: application/json' --log-file="$OUT/h2load-$label.log")
  if [ "$proto" = h1 ]; then
    args+=(--h1 -c "$H1_CLIENTS" -m 1)
  elif [ -n "$rate" ]; then
    args+=(-c 4 -m 8)
  else
    args+=(-c "$H2_CLIENTS" -m "$H2_STREAMS")
  fi
  if [ -n "$rate" ]; then
    local clients=4
    [ "$proto" = h1 ] && clients=$H1_CLIENTS
    args+=(--rps "$(((rate + clients - 1) / clients))")
  fi
  local before=0 rc=0 TIMEFORMAT='%U %S'
  LOAD_AVG=$(cut -d' ' -f1 /proc/loadavg)
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  { time timeout $((seconds + 60)) h2load "${args[@]}" "$url" >"$OUT/h2load-$label.txt" 2>&1; } \
    2>"$OUT/h2load-$label.time" || rc=$?
  [ "$rc" = 0 ] || log "h2load $label exited with $rc"
  local after=0
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  RPS=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$OUT/h2load-$label.txt")
  local done_ failed
  # requests: T total, S started, D done, OK succeeded, F failed, E errored, X timeout
  # status codes: A 2xx, B 3xx, C 4xx, D 5xx
  # An error is a request that failed (h2load counts network errors,
  # timeouts and 4xx/5xx answers as failed) or was answered 3xx.
  read -r done_ failed < <(awk '
    /^requests:/ {d = $8; f = $10}
    /^status codes:/ {n = $7}
    END {print d + 0, f + n}' "$OUT/h2load-$label.txt")
  ERRORS=$failed
  DONE=$done_
  CPU_US="-"
  if [ -n "$pid" ] && [ "${done_:-0}" -gt 0 ]; then
    # clock ticks are 1/100 s; the 2 s warm-up is included in the ticks
    # but not in `done`, so scale by the measured share.
    CPU_US=$(awk -v t=$((after - before)) -v d="$done_" -v s="$seconds" \
      'BEGIN {printf "%.0f", t * 10000 / (d * (s + 2) / s)}')
  fi
  CLIENT_US="-"
  if [ "${done_:-0}" -gt 0 ]; then
    CLIENT_US=$(awk -v d="$done_" -v s="$seconds" \
      '{printf "%.0f", ($1 + $2) * 1e6 / (d * (s + 2) / s)}' "$OUT/h2load-$label.time")
  fi
  [ -n "$RPS" ] || RPS=0
}

client_latency() { "$LOADKIT" stats h2load "$OUT/h2load-$1.log"; }

# --------------------------------------------------------------- start-up
log "start-up: $STARTUP_RUNS spawns to /readyz 200 (serving certificate from files)"
read -r s_min s_med s_max l_min l_med l_max < <("$LOADKIT" startup --bin "$ARCHWAY" \
  --config "$CONFIG" --runs "$STARTUP_RUNS" --tls-cert "$CERT" --tls-key "$KEY")
result "startup files $s_min $s_med $s_max $l_min $l_med $l_max"
SELF_SIGNED_CONFIG="$OUT/archway-self-signed.yaml"
grep -v -e certFile -e keyFile "$CONFIG" >"$SELF_SIGNED_CONFIG"
read -r ss_min ss_med ss_max sl_min sl_med sl_max < <("$LOADKIT" startup --bin "$ARCHWAY" \
  --config "$SELF_SIGNED_CONFIG" --runs "$STARTUP_RUNS")
result "startup self-signed $ss_min $ss_med $ss_max $sl_min $sl_med $sl_max"

# ------------------------------------------------------------- throughput
start_archway throughput 'warn,archway::app=info'
start_floor pod
POD_FLOOR_PID=$FLOOR_PID POD_FLOOR_URL=$FLOOR_URL
start_floor uid
for size in $SIZES; do
  "$LOADKIT" post --url "$ARCHWAY_URL" --ca "$CA" --expect-patch "$OUT/body-$size.json" 2>>"$OUT/warm.log"
done
for size in $SIZES; do
  for proto in $PROTOCOLS; do
    for server in archway floor podfloor; do
      case $server in
        archway) url=$ARCHWAY_URL pid=$ARCHWAY_PID ;;
        floor) url=$FLOOR_URL pid=$FLOOR_PID ;;
        podfloor) url=$POD_FLOOR_URL pid=$POD_FLOOR_PID ;;
      esac
      label="tput-$server-$size-$proto"
      log "throughput: $server, $size (${BODY_BYTES[$size]} B), $proto, ${DURATION}s"
      perf_pid=""
      if [ "$PROFILE" = 1 ] && [ "$size" = typical ] && [ "$proto" = h2 ]; then
        # No frame pointers in release builds: DWARF call graphs, at a low
        # rate so the data stays small.
        perf record -F 199 -e cpu-clock --call-graph dwarf,16384 -p "$pid" \
          -o "$OUT/perf-$server.data" -- sleep $((DURATION > 10 ? 10 : DURATION)) >/dev/null 2>&1 &
        perf_pid=$!
      fi
      run_h2load "$label" "$url" "$OUT/body-$size.json" "$proto" "$DURATION" "" "$pid"
      [ -n "$perf_pid" ] && wait "$perf_pid" || true
      read -r _n c50 c99 c999 cmax < <(client_latency "$label")
      result "tput $server $size $proto $RPS $ERRORS $DONE $CPU_US $c50 $c99 $c999 $cmax $CLIENT_US $LOAD_AVG"
      kill -0 "$pid" 2>/dev/null || die "$server died during $label"
    done
  done
done
if [ "$PROFILE" = 1 ]; then
  for server in archway floor; do
    [ -f "$OUT/perf-$server.data" ] || continue
    perf report -i "$OUT/perf-$server.data" --no-children --percent-limit 0.5 --stdio \
      --sort symbol -g none 2>/dev/null | grep -v '^$' >"$OUT/perf-$server-flat.txt" || true
    perf report -i "$OUT/perf-$server.data" --children --percent-limit 1 --stdio \
      --sort symbol -g none 2>/dev/null | grep -v '^$' >"$OUT/perf-$server-children.txt" || true
  done
fi
stop "$ARCHWAY_PID"
stop "$FLOOR_PID"
stop "$POD_FLOOR_PID"

# ---------------------------------------------- latency (logs on) + burst
start_archway latency info
for size in $SIZES; do
  "$LOADKIT" post --url "$ARCHWAY_URL" --ca "$CA" --expect-patch "$OUT/body-$size.json" 2>>"$OUT/warm.log"
done
start_floor uid
for size in $SIZES; do
  label="lat-archway-$size"
  log "latency: archway, $size, h2 at $LATENCY_RPS reviews/s for ${LATENCY_DURATION}s, every review logged"
  mark=$(wc -l <"$OUT/archway-latency.log")
  run_h2load "$label" "$ARCHWAY_URL" "$OUT/body-$size.json" h2 "$LATENCY_DURATION" "$LATENCY_RPS"
  tail -n +$((mark + 1)) "$OUT/archway-latency.log" | grep '"message":"review"' >"$OUT/server-$label.log" || true
  read -r sn s50 s99 s999 smax < <("$LOADKIT" stats field elapsed_ms "$OUT/server-$label.log")
  read -r _n c50 c99 c999 cmax < <(client_latency "$label")
  result "lat archway $size $RPS $ERRORS $sn $s50 $s99 $s999 $smax $c50 $c99 $c999 $cmax"
  label="lat-floor-$size"
  log "latency: floor, $size, h2 at $LATENCY_RPS reviews/s for ${LATENCY_DURATION}s"
  run_h2load "$label" "$FLOOR_URL" "$OUT/body-$size.json" h2 "$LATENCY_DURATION" "$LATENCY_RPS"
  read -r _n c50 c99 c999 cmax < <(client_latency "$label")
  result "lat floor $size $RPS $ERRORS - - - - - $c50 $c99 $c999 $cmax"
done
# Saturated with every review logged: what logging costs, and server-side
# latency when the machine is flat out.
label="satlog-archway-typical"
log "throughput with every review logged: archway, typical, h2, ${DURATION}s"
mark=$(wc -l <"$OUT/archway-latency.log")
run_h2load "$label" "$ARCHWAY_URL" "$OUT/body-typical.json" h2 "$DURATION" "" "$ARCHWAY_PID"
tail -n +$((mark + 1)) "$OUT/archway-latency.log" | grep '"message":"review"' >"$OUT/server-$label.log" || true
read -r sn s50 s99 s999 smax < <("$LOADKIT" stats field elapsed_ms "$OUT/server-$label.log")
read -r _n c50 c99 c999 cmax < <(client_latency "$label")
result "satlog archway typical $RPS $ERRORS $sn $s50 $s99 $s999 $smax $c50 $c99 $c999 $cmax $CPU_US"
stop "$FLOOR_PID"

for repo in burst-index burst-single; do
  log "cold burst: $BURST concurrent reviews of $repo (registry answers in ${BURST_DELAY_MS} ms)"
  line=$("$LOADKIT" burst --url "$ARCHWAY_URL" --ca "$CA" --body "$OUT/body-$repo.json" \
    --repo "$repo" --registry-log "$REGISTRY_LOG" --count "$BURST" --connections 10)
  log "$line"
  result "$line"
done
stop "$ARCHWAY_PID"

# ------------------------------------------------------ memory and soak
MEMORY_CONFIG="$OUT/archway-memory.yaml"
write_config "$MEMORY_CONFIG" $((FILL + 16))
start_archway memory 'warn,archway::app=info' "$MEMORY_CONFIG"
sleep 1
rss_empty=$(rss_kib "$ARCHWAY_PID")
log "memory: filling the cache with $FILL distinct images (in two halves)"
half=$((FILL / 2))
"$LOADKIT" fill --url "$ARCHWAY_URL" --ca "$CA" --prefix "$REGISTRY_HOST/fill:t" --count "$half" \
  --concurrency 32 >"$OUT/fill.txt"
sleep 2
rss_half=$(rss_kib "$ARCHWAY_PID")
"$LOADKIT" fill --url "$ARCHWAY_URL" --ca "$CA" --prefix "$REGISTRY_HOST/fill:t" --start "$half" \
  --count $((FILL - half)) --concurrency 32 >>"$OUT/fill.txt"
log "$(tr '\n' ' ' <"$OUT/fill.txt")"
sleep 5
rss_idle=$(rss_kib "$ARCHWAY_PID")
sleep 5
rss_idle2=$(rss_kib "$ARCHWAY_PID")
cp "/proc/$ARCHWAY_PID/smaps_rollup" "$OUT/memory-smaps_rollup.txt" 2>/dev/null || true
threads=$(awk '/^Threads:/ {print $2}' "/proc/$ARCHWAY_PID/status")
result "memory $FILL $rss_empty $rss_idle $rss_idle2 $rss_half $threads"

log "soak: typical reviews at $SOAK_RPS/s for ${SOAK}s, RSS every 10 s"
"$LOADKIT" post --url "$ARCHWAY_URL" --ca "$CA" --expect-patch "$OUT/body-typical.json" 2>>"$OUT/warm.log"
registry_lines_before=$(wc -l <"$REGISTRY_LOG")
: >"$OUT/soak-rss.txt"
(
  start=$(date +%s)
  while kill -0 "$ARCHWAY_PID" 2>/dev/null; do
    echo "$(($(date +%s) - start)) $(rss_kib "$ARCHWAY_PID")" >>"$OUT/soak-rss.txt"
    sleep 10
  done
) &
sampler=$!
pids+=("$sampler")
run_h2load soak "$ARCHWAY_URL" "$OUT/body-typical.json" h2 "$SOAK" "$SOAK_RPS" "$ARCHWAY_PID"
stop "$sampler"
echo "$((SOAK + 2)) $(rss_kib "$ARCHWAY_PID")" >>"$OUT/soak-rss.txt"
registry_requests=$(($(wc -l <"$REGISTRY_LOG") - registry_lines_before))
read -r _n c50 c99 c999 cmax < <(client_latency soak)
# RSS: first sample after the warm-up, max, last, and the least-squares
# slope over the soak (KiB per minute).
read -r r_first r_max r_last slope < <(awk '
  NR == 1 {next}
  {n++; x = $1; y = $2; sx += x; sy += y; sxx += x * x; sxy += x * y
   if (n == 1) first = y; if (y > max) max = y; last = y}
  END {d = n * sxx - sx * sx; s = (d > 0) ? (n * sxy - sx * sy) / d * 60 : 0
       printf "%d %d %d %.1f\n", first, max, last, s}' "$OUT/soak-rss.txt")
result "soak $SOAK $RPS $ERRORS $r_first $r_max $r_last $slope $CPU_US $c50 $c99 $c999 $cmax $registry_requests"
stop "$ARCHWAY_PID"

# ------------------------------------------------------------------ table
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
# throughput_row SERVER SIZE PROTO: that run's result line
throughput_row() {
  awk -v srv="$1" -v s="$2" -v p="$3" '$1 == "tput" && $2 == srv && $3 == s && $4 == p' "$RESULTS"
}
# over_floor RATE FLOOR_RATE: the ratio to the floor, to two places
over_floor() { awk -v a="$1" -v f="$2" 'BEGIN {if (f > 0) printf "%.2f", a / f; else print "-"}'; }
# ratio_range SERVER: the lowest and highest of SERVER's ratios to the floor over every run
ratio_range() {
  awk -v srv="$1" '$1 == "tput" {r[$3" "$4" "$2] = $5}
    END {lo = 99; hi = 0
      for (k in r) {split(k, p, " "); if (p[3] == srv && r[p[1]" "p[2]" floor"] > 0) {
        x = r[k] / r[p[1]" "p[2]" floor"]; if (x < lo) lo = x; if (x > hi) hi = x}}
      printf "%.2f %.2f\n", lo, hi}' "$RESULTS"
}
ok() { if [ "$1" = 1 ]; then echo "MET"; else echo "MISSED"; fi; }
{
  echo
  echo "archway load results ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, h2load -t 1 on the same machine)"
  echo "source: $(git describe --always --dirty 2>/dev/null || echo unknown)"
  [ -z "$ARCHWAY_ENV" ] || echo "servers run with: $ARCHWAY_ENV"
  echo "bodies: $(for s in small typical large; do printf '%s %s B  ' "$s" "${BODY_BYTES[$s]}"; done)"
  echo
  echo "Throughput (archway --log warn; h2: $H2_CLIENTS conns x $H2_STREAMS streams, h1: $H1_CLIENTS keep-alive conns; ${DURATION}s each)"
  printf '%-8s %-3s | %9s %6s %6s %6s | %9s %6s %6s %6s | %5s | %9s %6s %6s %7s | %-30s | %-30s | %s\n' \
    body proto "archway/s" errors "cpu us" "h2load" "floor/s" errors "cpu us" "h2load" ratio \
    "pod fl/s" "cpu us" "h2load" ceiling \
    "archway client p50/p99/p99.9" "floor client p50/p99/p99.9" "load avg"
  for size in $SIZES; do
    for proto in $PROTOCOLS; do
      read -r _ _ _ _ ar ae _ ac a50 a99 a999 _ ah al < <(throughput_row archway "$size" "$proto")
      read -r _ _ _ _ fr fe _ fc f50 f99 f999 _ fh fl < <(throughput_row floor "$size" "$proto")
      read -r _ _ _ _ pr _ _ pc _ _ _ _ ph _ < <(throughput_row podfloor "$size" "$proto")
      ratio=$(over_floor "$ar" "$fr")
      ceiling=$(over_floor "$pr" "$fr")
      printf '%-8s %-3s | %9.0f %6s %6s %6s | %9.0f %6s %6s %6s | %5s | %9.0f %6s %6s %7s | %8s/%8s/%8s ms | %8s/%8s/%8s ms | %s %s\n' \
        "$size" "$proto" "$ar" "$ae" "$ac" "$ah" "$fr" "$fe" "$fc" "$fh" "$ratio" \
        "$pr" "$pc" "$ph" "$ceiling" \
        "$a50" "$a99" "$a999" "$f50" "$f99" "$f999" "$al" "$fl"
    done
  done
  echo "(cpu us / h2load: CPU time per review of the server / of h2load; ratio: archway/s over floor/s;"
  echo " pod fl/s: the pod floor, which reads each pod as archway does and answers \"allowed\"; ceiling: its"
  echo " ratio to the floor, the most archway's could be if lookups, decision, patch and answer were free;"
  echo " client latencies are at saturation, so mostly queueing; load avg: when archway's / the floor's run began)"
  echo
  echo "Latency at $LATENCY_RPS reviews/s over HTTP/2 (archway --log info: every review logged; ${LATENCY_DURATION}s each)"
  printf '%-8s %-7s | %8s %6s | %-36s | %-36s\n' body server "rate/s" errors \
    "server elapsed_ms p50/p99/p99.9/max" "client ms p50/p99/p99.9/max"
  while read -r _ server size rate errors _sn s50 s99 s999 smax c50 c99 c999 cmax; do
    printf '%-8s %-7s | %8.0f %6s | %8s %8s %8s %8s | %8s %8s %8s %8s\n' \
      "$size" "$server" "$rate" "$errors" "$s50" "$s99" "$s999" "$smax" "$c50" "$c99" "$c999" "$cmax"
  done < <(awk '$1 == "lat"' "$RESULTS")
  read -r _ _ _ srate serr _sn s50 s99 s999 smax c50 c99 c999 cmax scpu < <(awk '$1 == "satlog"' "$RESULTS")
  printf 'saturated, logs on (typical, h2): %.0f reviews/s, %s errors, %s us CPU/review; server p50/p99/p99.9/max %s/%s/%s/%s ms; client %s/%s/%s/%s ms\n' \
    "$srate" "$serr" "$scpu" "$s50" "$s99" "$s999" "$smax" "$c50" "$c99" "$c999" "$cmax"
  echo
  echo "Cold burst ($BURST concurrent reviews over 10 HTTP/2 connections; registry behind a proxy adding ${BURST_DELAY_MS} ms per manifest)"
  awk '$1 == "burst" {$1 = ""; print " " $0}' "$RESULTS"
  echo
  read -r _ fill rss_empty rss_idle rss_idle2 rss_half threads < <(awk '$1 == "memory"' "$RESULTS")
  echo "Memory: RSS $(mib "$rss_empty") MiB empty, $(mib "$rss_half") MiB with $((fill / 2)) images; $(mib "$rss_idle") MiB / $(mib "$rss_idle2") MiB idle (5 s / 10 s) with $fill images cached ($threads threads)"
  read -r _ soak srate serr r_first r_max r_last slope scpu c50 c99 c999 cmax regreq < <(awk '$1 == "soak"' "$RESULTS")
  echo "Soak: ${soak}s at $SOAK_RPS/s target: $(printf '%.0f' "$srate") reviews/s, $serr errors, $scpu us CPU/review, client p50/p99/p99.9 $c50/$c99/$c999 ms;"
  echo "      RSS first $(mib "$r_first") MiB, max $(mib "$r_max") MiB, last $(mib "$r_last") MiB, slope $slope KiB/min; $regreq registry log lines during the soak"
  echo
  read -r _ _ s_min s_med s_max l_min l_med l_max < <(awk '$1 == "startup" && $2 == "files"' "$RESULTS")
  read -r _ _ ss_min ss_med ss_max sl_min sl_med sl_max < <(awk '$1 == "startup" && $2 == "self-signed"' "$RESULTS")
  echo "Start-up over $STARTUP_RUNS runs, spawn to /readyz 200 (min/median/max ms): certificate files $s_min/$s_med/$s_max (startup_ms $l_min/$l_med/$l_max); self-signed $ss_min/$ss_med/$ss_max (startup_ms $sl_min/$sl_med/$sl_max)"
  echo
  echo "Goals"
  t_a=$(awk '$1 == "tput" && $2 == "archway" && $3 == "typical" && $4 == "h2" {print $5}' "$RESULTS")
  t_e=$(awk '$1 == "tput" && $2 == "archway" {e += $6} END {print e + 0}' "$RESULTS")
  t_f=$(awk '$1 == "tput" && $2 == "floor" && $3 == "typical" && $4 == "h2" {print $5}' "$RESULTS")
  read -r min_ratio _ < <(ratio_range archway)
  worst_p99=$(awk '$1 == "lat" && $2 == "archway" {if ($8 > m) m = $8} END {print m + 0}' "$RESULTS")
  worst_p999=$(awk '$1 == "lat" && $2 == "archway" {if ($9 > m) m = $9} END {print m + 0}' "$RESULTS")
  echo "  cached p99 <= 1 ms, p99.9 <= 5 ms (server-side, at $LATENCY_RPS/s): worst p99 $worst_p99 ms, p99.9 $worst_p999 ms: $(ok "$(awk -v a="$worst_p99" -v b="$worst_p999" 'BEGIN {print (a <= 1 && b <= 5)}')")"
  echo "  >= 10,000 reviews/s, zero errors, ${DURATION}s (typical, h2): $(printf '%.0f' "$t_a")/s, $t_e errors over all archway runs: $(ok "$(awk -v a="$t_a" -v e="$t_e" -v d="$DURATION" 'BEGIN {print (a >= 10000 && e == 0 && d >= 60)}')")$([ "$DURATION" -ge 60 ] || echo " (run shorter than 60 s)")"
  echo "  >= 0.8 x floor: typical h2 $(over_floor "$t_a" "$t_f"), worst of all runs $min_ratio: $(ok "$(awk -v m="$min_ratio" 'BEGIN {print (m >= 0.8)}')")"
  read -r ceiling_lo ceiling_hi < <(ratio_range podfloor)
  echo "     (the pod floor, reading each pod as archway does and nothing more, reaches $ceiling_lo-$ceiling_hi x floor)"
  bursts_ok=$(awk '$1 == "burst" {for (i = 2; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}
    if (v["answered"] != v["reviews"] || v["manifest"] != 1 || v["blob"] > 1 || v["token"] > 1) bad = 1; n++}
    END {print (n > 0 && !bad)}' "$RESULTS")
  echo "  cold burst: 1 manifest (+<= 1 blob, <= 1 token), every review answered: $(ok "$bursts_ok")"
  mem_ok=$(awk -v a="$rss_idle2" -v s="$slope" -v m="$r_max" -v f="$r_first" 'BEGIN {print (a <= 51200 && (m - f) <= 5120 && s < 100)}')
  echo "  RSS <= 50 MiB idle with $fill images, flat over ${soak}s soak (max - first <= 5 MiB, slope < 100 KiB/min): $(ok "$mem_ok")$([ "$SOAK" -ge 600 ] || echo " (soak shorter than 10 min)")"
  echo "  start-up <= 100 ms to ready: median $s_med ms (files), $ss_med ms (self-signed): $(ok "$(awk -v a="$s_max" 'BEGIN {print (a <= 100)}')") (judged on the max of the certificate-file runs)"
} | tee "$OUT/table.txt"
log "table in $OUT/table.txt, raw figures in $RESULTS, logs and h2load output in $OUT"
