#!/usr/bin/env bash
# Installs what the OpenStack lab needs from Debian and starts it, for the tests in
# tests/it/openstack.rs (which run the same up.sh themselves, once per test binary: quick when
# the lab is already up). Run it before `cargo test` in CI to take the cold start (about
# 3 minutes: pip ~70 s, apt ~20 s, first start ~95 s) out of the test timeout.
#
#   tests/openstack-lab.sh            # install (once) and start
#
# Environment (the same names the tests read):
#   GATEHOUSE_OS_LAB_UP   the lab's up.sh (default /work/shared/labs/openstack/up.sh)
#   GATEHOUSE_OS_LAB      the lab's state folder: venv, databases, logs (default /tmp/gatehouse-oslab)
set -euo pipefail

LAB_UP="${GATEHOUSE_OS_LAB_UP:-/work/shared/labs/openstack/up.sh}"
export OS_LAB="${GATEHOUSE_OS_LAB:-/tmp/gatehouse-oslab}"

# python3-venv/-dev and build-essential: the venv, and uWSGI, which pip compiles from source.
# rabbitmq-server: Nova's message bus. curl: up.sh's health checks.
PACKAGES="python3 python3-venv python3-dev build-essential curl ca-certificates rabbitmq-server"

missing_packages() {
    local pkg status
    for pkg in $PACKAGES; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == installed ]] || printf '%s ' "$pkg"
    done
}

if command -v dpkg-query >/dev/null 2>&1; then
    missing="$(missing_packages)"
    if [[ -n "$missing" ]]; then
        as_root=()
        if [[ "$(id -u)" -ne 0 ]]; then
            command -v sudo >/dev/null 2>&1 || {
                echo "openstack-lab.sh: missing packages ($missing) and not root without sudo" >&2
                exit 1
            }
            as_root=(sudo)
        fi
        echo "openstack-lab.sh: installing $missing" >&2
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=600 update
        # shellcheck disable=SC2086 # one word per package
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends install $missing
    fi
else
    echo "openstack-lab.sh: not a Debian system; install yourself: $PACKAGES" >&2
fi

[[ -x "$LAB_UP" ]] || { echo "openstack-lab.sh: no lab script at $LAB_UP" >&2; exit 1; }
OS_LAB_NO_APT=1 exec "$LAB_UP"
