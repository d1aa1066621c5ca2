#!/usr/bin/env bash
# Installs what the tests and tests/cluster.sh run for real, where missing:
# a CNCF registry, skopeo, htpasswd, Debian's kubectl (kustomize v2),
# Python's venv, and HAProxy (the load balancer in front of archway's
# replicas, tests/testkit/src/balancer.rs). Go, which builds the control plane
# (tests/controlplane/build.sh), comes with the machine: Debian's is too old.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
# Debian's kubectl 1.20 renders deploy/ with kustomize v2 (tests/deploy.rs).
[ -x /usr/bin/kubectl ] || missing+=(kubernetes-client)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# In /usr/sbin, which a user's PATH may lack.
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "tests/deps.sh: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  # The downloaded packages (chromium's are most of them) are not needed
  # once installed; disk is what a CI machine ran short of.
  $sudo apt-get clean
fi
