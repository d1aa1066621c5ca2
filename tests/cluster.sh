#!/usr/bin/env bash
# Try archway on a real Kubernetes control plane, on this machine:
#
#   tests/cluster.sh up     start it; prints KUBECONFIG=, KUBECTL=, REGISTRY=
#                           and the sample images (IMAGE_...=), one per line
#   tests/cluster.sh down   stop everything `up` started
#
# `up` builds (first run only) and starts etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler on 127.0.0.1; registers an
# amd64 node pool and an arm64 pool tainted kubernetes.io/arch=arm64:NoSchedule
# (Node objects: no kubelet runs, a stand-in reports bound pods running);
# applies `kubectl kustomize deploy/` with server-side apply; starts a local
# registry with sample images (multi-arch, amd64-only, arm64-only); and runs
# `archway serve` on the host as the archway ServiceAccount. The tests use
# the same pieces (tests/testkit/src/controlplane.rs, install.rs, kubelet.rs).
#
# State and logs: $ARCHWAY_CLUSTER_DIR (default target/cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
state="${ARCHWAY_CLUSTER_DIR:-$PWD/target/cluster}"

running_pid() {
  [ -f "$state/pid" ] || return 1
  local pid
  pid=$(cat "$state/pid")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

up() {
  if pid=$(running_pid); then
    echo "cluster.sh: already running (pid $pid, state in $state); 'tests/cluster.sh down' stops it" >&2
    exit 1
  fi
  tests/deps.sh
  tests/controlplane/build.sh >/dev/null
  echo "cluster.sh: building archway and the cluster kit" >&2
  local kit
  kit=$(cargo test --no-run --test clusterkit --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*clusterkit-[^"]*"' | tail -n 1 | cut -d'"' -f4)
  [ -x "$kit" ] || { echo "cluster.sh: cannot build tests/clusterkit.rs (cargo test --no-run --test clusterkit)" >&2; exit 1; }
  rm -rf "$state"
  mkdir -p "$state"
  nohup "$kit" run --state "$state" >"$state/clusterkit.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$state/pid"
  echo "cluster.sh: starting (log: $state/clusterkit.log)" >&2
  local waited=0
  until [ -f "$state/env" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "cluster.sh: the cluster kit exited:" >&2
      tail -n 40 "$state/clusterkit.log" >&2
      exit 1
    fi
    if [ "$waited" -ge 300 ]; then
      echo "cluster.sh: not ready after 300 s; stopping it" >&2
      down
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  cat "$state/env"
}

down() {
  local pid
  if ! pid=$(running_pid); then
    echo "cluster.sh: not running" >&2
    rm -rf "$state"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -rf "$state"
  echo "cluster.sh: stopped" >&2
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: tests/cluster.sh up|down" >&2; exit 2 ;;
esac
