#!/usr/bin/env bash
# Builds the tools the deploy tests check archway's install with: helm (the
# chart in deploy/helm), promtool (the alerts in deploy/monitoring) and the
# Prometheus server (the dashboard's queries, run against a scrape), from
# the Go modules pinned in go.mod beside this script, into a cache folder
# keyed by those pins. Only a machine's first run pays for the build; later
# runs reuse the binaries. Nothing is downloaded but Go modules, through the
# Go module proxy.
#
# Prints the folder holding the binaries on its last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# The cache key is the pinned versions and this script (its build flags),
# so a change of either builds afresh and an old build is never reused by
# mistake.
key="$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-16)"
pin() { awk -v m="$1" '$1 == m && $2 ~ /^v/ {print $2}' "$here/go.mod"; }
helm_version="$(pin helm.sh/helm/v3)"
prometheus_version="$(pin github.com/prometheus/prometheus)"
client_go_version="$(pin k8s.io/client-go)"
cache_root="${ARCHWAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/archway}"
bin="$cache_root/tools/helm-$helm_version-prometheus-$prometheus_version-$key/bin"
tools=(helm promtool prometheus)

complete() {
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
}

if ! complete; then
  # One build at a time per cache folder: parallel test binaries may all ask.
  mkdir -p "$(dirname "$bin")"
  exec 9>"$(dirname "$bin")/.lock"
  flock 9
  if ! complete; then
    command -v go >/dev/null || { echo "build.sh: Go is needed to build helm, promtool and prometheus" >&2; exit 1; }
    echo "build.sh: building helm $helm_version, promtool and prometheus (module $prometheus_version) into $bin (first run on this machine only)" >&2
    start=$(date +%s)
    tmp="$bin.tmp.$$"
    # A build cut short leaves nothing behind (the final folder appears whole
    # or not at all).
    trap 'rm -rf "$tmp" "$tmp.go"' EXIT
    rm -rf "$tmp"; mkdir -p "$tmp"
    # The version stamps helm's and Prometheus' release builds set. helm's
    # default Kubernetes version (.Capabilities.KubeVersion, and what lint
    # checks deprecated APIs against) is that of the client-go it is built
    # with: v0.N.x is Kubernetes 1.N.
    k8s_minor="${client_go_version#v0.}"; k8s_minor="${k8s_minor%%.*}"
    ldflags="-s -w"
    ldflags+=" -X helm.sh/helm/v3/internal/version.version=$helm_version"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
    done
    # Prometheus v3.N.x is published as the Go module version v0.3NN.x.
    prometheus_release="${prometheus_version#v0.}"
    prometheus_release="3.$((10#${prometheus_release:1:2})).${prometheus_release#*.}"
    ldflags+=" -X github.com/prometheus/common/version.Version=$prometheus_release"
    (
      cd "$here"
      export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false -modcacherw"
      # Go's build and module caches for this build live beside it and go
      # with it: the binaries are what is kept, and the caches (GBs for
      # Kubernetes) would stay on a machine that may be short of disk.
      export GOCACHE="$tmp.go/build" GOMODCACHE="$tmp.go/mod"
      # One `go build` for all three, so the packages they share (client-go
      # and its dependencies, Prometheus' own) compile once. remove_all_sd
      # leaves Prometheus' service discovery plugins (the cloud SDKs) out:
      # checking rules needs none, the tests' server scrapes static targets
      # only, and they are most of the build. Without the builtinassets tag
      # the server embeds no web UI; its HTTP API, all the tests query, is
      # there still.
      go build -trimpath -tags remove_all_sd -ldflags "$ldflags" -o "$tmp/" \
        helm.sh/helm/v3/cmd/helm \
        github.com/prometheus/prometheus/cmd/promtool \
        github.com/prometheus/prometheus/cmd/prometheus
    )
    rm -rf "$bin"; mv "$tmp" "$bin"
    echo "build.sh: built in $(( $(date +%s) - start )) s" >&2
  fi
fi
echo "$bin"
