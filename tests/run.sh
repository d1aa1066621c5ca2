#!/usr/bin/env bash
# archway's whole test suite, from a fresh machine: installs what the tests
# run for real (a CNCF registry, skopeo, htpasswd, kubectl 1.20 for
# kustomize v2, kubernetes-validate), builds the Kubernetes control plane
# from its Go modules (cached per version: only a machine's first run pays),
# then checks formatting, lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/deps.sh

# kubernetes-validate in a virtual environment of its own: Debian's Python
# refuses a system-wide pip install (externally-managed-environment).
venv="$PWD/target/tools/venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "tests/run.sh: installing kubernetes-validate into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi
export PATH="$venv/bin:$PATH"

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl
# (tests/controlplane/). Built here rather than inside a test so that a cold
# build is shown as it happens and no test's time is spent on it.
start=$(date +%s)
controlplane="$(tests/controlplane/build.sh | tail -n 1)"
echo "tests/run.sh: control plane binaries in $controlplane ($(( $(date +%s) - start )) s)"
# helm, promtool and prometheus (tests/tools/), for the chart, monitoring
# and dashboard tests.
start=$(date +%s)
tools="$(tests/tools/build.sh | tail -n 1)"
echo "tests/run.sh: helm, promtool and prometheus in $tools ($(( $(date +%s) - start )) s)"
# deploy/ is rendered by Debian's kubectl 1.20 (kustomize v2) and by the
# control plane's kubectl (kustomize v5).
export ARCHWAY_TEST_KUBECTL="${ARCHWAY_TEST_KUBECTL:-/usr/bin/kubectl:$controlplane/kubectl}"

# Incremental compilation only pays when the same code is built again and
# again; here it would add GBs of cache per test binary to a machine that may
# be short of disk.
export CARGO_INCREMENTAL=0

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
