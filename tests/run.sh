#!/usr/bin/env bash
# The test command: installs the Debian packages the tests drive (once; a quick check when they
# are present), then runs `cargo test --locked` with any arguments given here.
#
#   tests/run.sh                 # everything
#   tests/run.sh --test it install   # passes arguments through to cargo test
set -euo pipefail

# Debian packages the tests need. Add to this list (slapd, xrdp, …) when a test needs a server.
# The OpenStack lab (tests/openstack/up.sh) needs python3-venv, python3-dev and build-essential
# (its venv, and uWSGI, which pip compiles) and rabbitmq-server (Nova's message bus). The
# installer's systemd test boots a Debian machine made by debootstrap with systemd-nspawn
# (package systemd-container).
TEST_PACKAGES="chromium chromium-driver fonts-liberation curl ca-certificates slapd ldap-utils nginx libnginx-mod-stream apache2 haproxy xvfb x11vnc novnc freerdp2-x11 freerdp2-shadow-x11 winpr-utils python3 python3-venv python3-dev build-essential rabbitmq-server systemd-container debootstrap"

# Answers for packages that would otherwise prompt ("package question value" lines for
# debconf-set-selections), e.g. "slapd slapd/no_configuration boolean true".
DEBCONF_SELECTIONS="slapd slapd/no_configuration boolean true"

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

missing_packages() {
    local pkg status
    for pkg in $TEST_PACKAGES; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == installed ]] || printf '%s ' "$pkg"
    done
}

install_packages() {
    local missing
    command -v dpkg-query >/dev/null 2>&1 || {
        echo "tests/run.sh: not a Debian system; install these yourself: $TEST_PACKAGES" >&2
        return 0
    }
    missing="$(missing_packages)"
    [[ -n "$missing" ]] || return 0

    local -a as_root=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "tests/run.sh: missing packages ($missing) and not root without sudo: install them as root" >&2
            exit 1
        }
        as_root=(sudo)
    fi
    echo "tests/run.sh: installing $missing" >&2
    if [[ -n "$DEBCONF_SELECTIONS" ]]; then
        printf '%s\n' "$DEBCONF_SELECTIONS" | "${as_root[@]}" debconf-set-selections
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=600 update
    # shellcheck disable=SC2086 # one word per package
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends install $missing
}

# A real OpenStack (Keystone, Nova, Glance, Placement, Neutron) on loopback for the OpenStack
# tests: about 3 minutes the first time (PyPI), seconds when it is already up. The tests run
# the same idempotent script once more themselves.
start_openstack_lab() {
    local log="${GATEHOUSE_OS_LAB:-/tmp/gatehouse-oslab}.log"
    echo "tests/run.sh: starting the OpenStack lab (log: $log)" >&2
    if ! OS_LAB="${GATEHOUSE_OS_LAB:-/tmp/gatehouse-oslab}" OS_LAB_NO_APT=1 \
        tests/openstack/up.sh >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "tests/run.sh: the OpenStack lab did not start (full log: $log)" >&2
        exit 1
    fi
}

install_packages
start_openstack_lab
exec cargo test --locked "$@"
