#!/usr/bin/env bash
# archway's whole test suite, from a fresh machine: installs what the tests
# run for real (a CNCF registry, skopeo, htpasswd, kubectl, kubernetes-validate),
# then checks formatting, lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
# kubectl renders deploy/ (kustomize); any kubectl will do, Debian's is 1.20.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "tests/run.sh: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "tests/run.sh: installing kubernetes-validate"
  python3 -m pip install -q kubernetes-validate
fi

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
