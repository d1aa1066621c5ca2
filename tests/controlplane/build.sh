#!/usr/bin/env bash
# Builds the Kubernetes control plane that the tests and tests/cluster.sh run
# archway behind (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) from the Go modules pinned in go.mod beside this
# script, into a cache folder keyed by those pins. Only a machine's first run
# pays for the build; later runs reuse the binaries. Nothing is downloaded but
# Go modules, through the Go module proxy.
#
# Prints the folder holding the binaries on its last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# The cache key is the pinned versions themselves, so a change of go.mod or
# go.sum builds afresh and an old build is never reused by mistake.
key="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' "$here/go.mod")"
cache_root="${ARCHWAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/archway}"
bin="$cache_root/controlplane/$k8s_version-$key/bin"
tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)

complete() {
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
}

if ! complete; then
  # One build at a time per cache folder: parallel test binaries may all ask.
  mkdir -p "$(dirname "$bin")"
  exec 9>"$(dirname "$bin")/.lock"
  flock 9
  if ! complete; then
    command -v go >/dev/null || { echo "build.sh: Go is needed to build the control plane" >&2; exit 1; }
    echo "build.sh: building Kubernetes $k8s_version and etcd into $bin (first run on this machine only)" >&2
    start=$(date +%s)
    tmp="$bin.tmp.$$"
    # A build cut short leaves nothing behind (the final folder appears whole
    # or not at all), and its Go caches go in every case.
    trap 'rm -rf "$tmp" "$tmp.go"' EXIT
    rm -rf "$tmp"; mkdir -p "$tmp"
    # kubectl compares its version with the server's; give the binaries the
    # version they are built from, as the release build does.
    major="${k8s_version#v}"; major="${major%%.*}"
    minor="${k8s_version#v*.}"; minor="${minor%%.*}"
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    (
      cd "$here"
      export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false -modcacherw"
      # Go's build and module caches for this build live beside it and go
      # with it: the binaries are what is kept, and the caches (GBs for
      # Kubernetes) would stay on a machine that may be short of disk.
      export GOCACHE="$tmp.go/build" GOMODCACHE="$tmp.go/mod"
      # One `go build` for all five, so the packages they share compile once.
      go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubectl \
        go.etcd.io/etcd/server/v3
    )
    # go names a binary after its package path's last element that is not a
    # major-version suffix: etcd's server module gives "server".
    mv "$tmp/server" "$tmp/etcd"
    rm -rf "$bin"; mv "$tmp" "$bin"
    echo "build.sh: built in $(( $(date +%s) - start )) s" >&2
  fi
fi
echo "$bin"
