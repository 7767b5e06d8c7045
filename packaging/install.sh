#!/usr/bin/env bash
# Install or upgrade Gatehouse on one Linux machine.
#
#   curl -fsSL https://…/install.sh | sudo bash -s -- --archive https://…/gatehouse-X.Y.Z-x86_64.tar.gz
#   sudo packaging/install.sh                 # from a checkout: builds with cargo first
#   packaging/install.sh --prefix ~/gh --no-systemd --binary target/release/gatehouse
#   curl -fsSL https://…/install.sh | sudo bash -s -- --archive https://…/gatehouse-X.Y.Z-x86_64.tar.gz \
#       --gateway --broker https://broker.internal --gateway-token-file /root/gateway.token
#   sudo packaging/install.sh --uninstall     # the service and the binary; keeps config and data
#
# Run `install.sh --help` for every option. Re-running upgrades in place: the configuration is
# never overwritten, the data folder is kept, and a backup is taken with the old binary before
# the new one replaces it.
set -euo pipefail

readonly SERVICE_NAME=gatehouse
readonly SERVICE_USER=gatehouse
readonly UNIT_PATH=/etc/systemd/system/gatehouse.service
readonly GATEWAY_SERVICE_NAME=gatehouse-gateway
readonly GATEWAY_UNIT_PATH=/etc/systemd/system/gatehouse-gateway.service
readonly HEALTH_TRIES=60

usage() {
    cat <<'EOF'
Usage: install.sh [OPTIONS]

Installs (or upgrades in place) the Gatehouse binary, a default configuration, the data folder
and, unless --no-systemd, a hardened systemd service that is enabled and started.

Where the binary comes from (first that applies):
  --binary PATH     an already built gatehouse binary
  --archive URL     a release .tar.gz that contains `gatehouse` (https://, file://, anything curl
                    fetches)
  (neither)         build the checkout this script sits in with `cargo build --release --locked`;
                    when the script is piped into bash there is no checkout: pass --archive

Where it goes:
  (default)         /usr/local/bin/gatehouse, /etc/gatehouse/gatehouse.toml, /var/lib/gatehouse
                    (owned by the `gatehouse` system user, which is created); needs root
  --prefix DIR      everything under DIR instead: DIR/bin, DIR/etc/gatehouse,
                    DIR/var/lib/gatehouse; creates no user; requires --no-systemd
  --no-systemd      install no service and start nothing; print the command that starts it

Other options:
  --listen ADDR     the [server] listen address written into a NEW configuration
                    (default 0.0.0.0:443; 0.0.0.0:8443 with --prefix, which runs unprivileged)
  --print-unit      print the systemd unit this script installs, and exit (with --gateway:
                    the gateway's unit)
  --uninstall       stop and remove the service (with --gateway: the gateway's) and the binary
                    (kept while the other service is installed); refused while a process still
                    runs the binary. The configuration, the data folder with its backups and the
                    service user are kept, so installing again picks up where it stopped; it
                    prints the commands that remove them too. With --prefix DIR --no-systemd:
                    that tree's binary.
  -h, --help        this help

The broker's configuration file is only written when absent. On an upgrade the service is
stopped, the data folder is exported with the OLD binary to
  <data>/backups/pre-upgrade-<UTC timestamp>.ghbak
then the binary is replaced atomically (the old one is kept as <binary>.previous, to go back
with that backup) and the service started again. Without systemd, a
server that still holds the data folder must be stopped first: the script refuses otherwise.

A standalone gateway on another host (`gatehouse gateway`, no data folder, no console):
  --gateway         install the gateway instead of the broker: the service
                    gatehouse-gateway.service, its flags in <etc>/gatehouse/gateway.env
  --broker URL      the broker it forwards portal, console and API requests to, and is
                    registered with (https://host[:port])
  --gateway-token-file FILE
                    the gateway's token from the console (Setup > Gateways): the gateway then
                    fetches the broker's key and session-end notices and reports its tunnels
  --broker-key FILE the broker's public key (`gatehouse broker-key export`), instead of a token
  --broker-ca FILE  the broker's certificate authority (PEM), when the system's does not sign it
  --cert FILE --key FILE
                    the gateway's certificate and key (PEM; default: one generated at each start)
  --flexvdi-config FILE
                    a flexVDI gateway configuration (JSON), read where it is: its ports,
                    certificate and managers (the flags above win)
  --listen ADDR     the gateway's TLS port (default 0.0.0.0:443, 0.0.0.0:8443 with --prefix;
                    with --flexvdi-config, its ListenIP and SslPort)
  The files are copied into <etc>/gatehouse (readable by the service user only) and
  `gatehouse gateway --check` checks them before anything is installed. gateway.env is only
  written when absent: re-running with just --gateway (and the binary's source) upgrades the
  binary and keeps it; edit it for any other change (`gatehouse gateway --help` lists every flag).

EOF
}

# The systemd units, printed in parts: what the broker's and the gateway's share is written once.
# The [Unit] section and the start of [Service], for the unit described as $1.
unit_head() {
    printf '[Unit]\nDescription=%s\n' "$1"
    cat <<'UNIT'
Documentation=https://example.invalid/gatehouse
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=gatehouse
Group=gatehouse
UNIT
}

# Restarts, limits and the one privilege.
unit_limits() {
    cat <<'UNIT'
Restart=on-failure
RestartSec=2s
TimeoutStopSec=30s
LimitNOFILE=65536
UMask=0077

# Binding to port 443 (and the forwarded ports) is the only privilege it needs.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=true

UNIT
}

# The sandbox after the file-system lines, and [Install].
unit_sandbox() {
    cat <<'UNIT'
ProtectHome=true
PrivateTmp=true
PrivateDevices=true
PrivateMounts=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
MemoryDenyWriteExecute=true
RemoveIPC=true
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
UNIT
}

# The unit installed by this script: identical to packaging/gatehouse.service (a test checks it).
print_unit() {
    cat <<'UNIT'
# Gatehouse: VDI connection broker and gateway. Installed by packaging/install.sh, which keeps
# an identical copy of this file (a test checks they match): edit both together.
UNIT
    unit_head "Gatehouse VDI connection broker and gateway"
    echo "ExecStart=/usr/local/bin/gatehouse serve --config /etc/gatehouse/gatehouse.toml"
    unit_limits
    cat <<'UNIT'
# Everything is read-only except the data folder (store, certificates, backups).
ProtectSystem=strict
ReadWritePaths=/var/lib/gatehouse
RuntimeDirectory=gatehouse
RuntimeDirectoryMode=0700
UNIT
    unit_sandbox
}

# The standalone gateway's unit: identical to packaging/gatehouse-gateway.service (a test checks it).
print_gateway_unit() {
    cat <<'UNIT'
# Gatehouse standalone gateway (`gatehouse gateway`). Installed by `packaging/install.sh
# --gateway`, which keeps an identical copy of this file (a test checks they match): edit both
# together. Its flags are in /etc/gatehouse/gateway.env; `systemctl reload` re-reads the
# certificate without dropping tunnels.
UNIT
    unit_head "Gatehouse standalone gateway"
    cat <<'UNIT'
EnvironmentFile=/etc/gatehouse/gateway.env
ExecStart=/usr/local/bin/gatehouse gateway $GATEHOUSE_GATEWAY_ARGS
# The shell's own kill: a minimal system may have no kill program. ($$ is a literal $.)
ExecReload=/bin/sh -c 'kill -HUP $$MAINPID'
UNIT
    unit_limits
    cat <<'UNIT'
# It writes nothing: its certificate, token and keys are read from /etc/gatehouse.
ProtectSystem=strict
UNIT
    unit_sandbox
}

say() { printf 'gatehouse install: %s\n' "$*" >&2; }
die() {
    printf 'gatehouse install: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Helpers (they read the globals main sets)
# ---------------------------------------------------------------------------------------------
need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"
}

cleanup() {
    rm -rf -- "$work"
    if [[ -n "$staged" ]]; then rm -f -- "$staged"; fi
}

# Runs a command as the user the server runs as, so files it creates have the right owner.
as_service_user() {
    if [[ "$system_wide" -eq 1 && "$(id -u)" -eq 0 ]]; then
        runuser -u "$SERVICE_USER" -- "$@"
    else
        "$@"
    fi
}

# Sets `listen` and `data_dir` in the [server] table of a TOML file on stdin: an existing
# assignment (commented out or not) is replaced in place; a missing one is added to the table.
set_server_keys() {
    awk -v listen="$1" -v data="$2" '
        function emit_missing() {
            if (!done_listen) print "listen = \"" listen "\""
            if (!done_data) print "data_dir = \"" data "\""
            done_listen = 1; done_data = 1
        }
        /^[[:space:]]*\[/ {
            if (in_server) emit_missing()
            in_server = ($0 ~ /^[[:space:]]*\[[[:space:]]*server[[:space:]]*\][[:space:]]*(#.*)?$/)
            if (in_server) seen_server = 1
            print
            next
        }
        in_server && /^[[:space:]]*#?[[:space:]]*listen[[:space:]]*=/ {
            commented = ($0 ~ /^[[:space:]]*#/)
            if (!done_listen && (!commented || $0 ~ /=[[:space:]]*"/)) {
                print "listen = \"" listen "\""; done_listen = 1; next
            }
            if (!commented) next
        }
        in_server && /^[[:space:]]*#?[[:space:]]*data_dir[[:space:]]*=/ {
            commented = ($0 ~ /^[[:space:]]*#/)
            if (!done_data && (!commented || $0 ~ /=[[:space:]]*"/)) {
                print "data_dir = \"" data "\""; done_data = 1; next
            }
            if (!commented) next
        }
        { print }
        END {
            if (in_server) emit_missing()
            if (!seen_server) { print ""; print "[server]"; emit_missing() }
        }
    '
}

# Prints "PID COMMAND" for every process with a file open under the data folder.
data_holders() {
    local real pid
    real="$(cd -- "$data_dir" && pwd -P)"
    { find /proc/[0-9]*/fd -maxdepth 1 -type l -lname "$real/*" 2>/dev/null || true; } |
        awk -F/ '{print $3}' | sort -un | while read -r pid; do
        [[ "$pid" == "$$" ]] && continue
        printf '%s %s\n' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    done
}

# True when the data folder holds anything besides the backups folder.
has_data() {
    [[ -n "$(find "$data_dir" -mindepth 1 -maxdepth 1 ! -name backups -print -quit)" ]]
}

restart_old() {
    if [[ "$was_active" -eq 1 ]]; then
        say "starting the previous version again"
        systemctl start "$SERVICE_NAME" || true
    fi
}

# The [server] listen address of the configuration in use (it may have been edited).
configured_listen() {
    awk '
        /^[[:space:]]*\[/ { in_server = ($0 ~ /^[[:space:]]*\[[[:space:]]*server[[:space:]]*\]/); next }
        in_server && /^[[:space:]]*listen[[:space:]]*=/ {
            sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
        }
    ' "$conf_file"
}

# A browser address for a listen address: wildcard hosts become this machine's address.
console_url() {
    local addr="$1" host port
    host="${addr%:*}"
    port="${addr##*:}"
    case "$host" in
        0.0.0.0 | "[::]" | "")
            host="$(hostname -I 2>/dev/null | awk '{print $1}')"
            host="${host:-$(hostname -f 2>/dev/null || hostname)}"
            [[ "$host" == *:* ]] && host="[$host]"
            ;;
    esac
    if [[ "$port" == 443 ]]; then
        printf 'https://%s/admin\n' "$host"
    else
        printf 'https://%s:%s/admin\n' "$host" "$port"
    fi
}

# Creates the system user the services run as (system-wide installs only).
ensure_service_user() {
    if [[ "$system_wide" -eq 1 ]] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        local nologin=/usr/sbin/nologin
        [[ -x "$nologin" ]] || nologin=/sbin/nologin
        [[ -x "$nologin" ]] || nologin=/bin/false
        say "creating system user $SERVICE_USER"
        useradd --system --user-group --home-dir "$data_dir" --no-create-home \
            --shell "$nologin" --comment "Gatehouse" "$SERVICE_USER"
    fi
}

# Puts the new binary in place: a same-folder rename, so the path always names a whole binary.
# An upgrade keeps the old one beside it as gatehouse.previous: the pre-upgrade backup is best
# restored with the version that wrote it.
install_binary() {
    if [[ -e "$target_bin" ]] && ! cmp -s -- "$target_bin" "$new_bin"; then
        cp -p -- "$target_bin" "$target_bin.previous.$$"
        mv -f -- "$target_bin.previous.$$" "$target_bin.previous"
        say "kept the previous binary as $target_bin.previous"
    fi
    staged="$bin_dir/.gatehouse.new.$$"
    cp -- "$new_bin" "$staged"
    chmod 0755 "$staged"
    mv -f -- "$staged" "$target_bin"
    staged=""
    say "installed $new_version as $target_bin"
}

# Installs the unit file $2 as $3, (re)starts service $1 and waits until https://<listen $4>$5
# answers 200. $6 ends the error message.
start_service() {
    local service="$1" unit="$2" unit_path="$3" addr="$4" path="$5" more="$6" host health ok=0
    install -m 0644 -- "$unit" "$unit_path"
    systemctl daemon-reload
    systemctl enable --quiet "$service"
    systemctl restart "$service"

    host="${addr%:*}"
    case "$host" in
        0.0.0.0 | "") host=127.0.0.1 ;;
        "[::]") host="[::1]" ;;
    esac
    health="https://$host:${addr##*:}$path"
    say "waiting for $health"
    for _ in $(seq 1 "$HEALTH_TRIES"); do
        if curl -kfs --max-time 3 -o /dev/null "$health" 2>/dev/null; then
            ok=1
            break
        fi
        if systemctl is-failed --quiet "$service"; then break; fi
        sleep 1
    done
    if [[ "$ok" -ne 1 ]]; then
        journalctl -u "$service" -n 30 --no-pager >&2 || true
        die "$service.service did not become healthy at $health (log above; systemctl status $service)$more"
    fi
    say "$new_version is running"
}

# Copies $1 (a file given on the command line) to $conf_dir/$2, readable by the service only.
copy_conf_file() {
    local from="$1" to="$conf_dir/$2"
    cp -- "$from" "$to.new.$$"
    chmod 0640 "$to.new.$$"
    if [[ "$system_wide" -eq 1 ]]; then chown root:"$SERVICE_USER" "$to.new.$$"; fi
    mv -f -- "$to.new.$$" "$to"
}

# Dies unless $1 is one word that gateway.env can hold as it is (systemd splits the flags on
# spaces and reads quotes, backslashes and dollars): $2 names it in the message.
plain_word() {
    case "$1" in
        *[[:space:]\"\\\$\`\']*) die "$2 must not contain spaces, quotes, backslashes or dollar signs: '$1'" ;;
    esac
}

# The gateway's file options and the names of their copies in the configuration folder.
readonly GATEWAY_FILES=(broker-ca:broker-ca.pem broker-key:broker.pem
    gateway-token-file:gateway.token cert:gateway.crt key:gateway.key)

# The file given with option --$1 (empty when none was).
given_file() {
    local var="${1//-/_}"
    printf '%s' "${!var}"
}

# The flags in gateway.env (the quoted value of GATEHOUSE_GATEWAY_ARGS).
gateway_env_args() {
    sed -n 's/^GATEHOUSE_GATEWAY_ARGS="\(.*\)"$/\1/p' "$gateway_env" | tail -n 1
}

# The standalone gateway: its files in the configuration folder, gateway.env, the binary, and
# gatehouse-gateway.service. Every flag and file is checked with the new binary first.
install_gateway() {
    gateway_env="$conf_dir/gateway.env"
    local args check_args=() checked live_listen start_cmd
    if [[ -e "$gateway_env" ]]; then
        if [[ -n "$gateway_settings$listen_given" ]]; then
            die "$gateway_env exists, so this is an upgrade and only the binary changes: edit that file (and the files it names) instead, or remove it to write a new one; nothing was changed"
        fi
        say "keeping the existing $gateway_env"
        args="$(gateway_env_args)"
        [[ -n "$args" ]] || die "$gateway_env has no GATEHOUSE_GATEWAY_ARGS=\"...\" line: fix it, then re-run; nothing was changed"
        # The flags are words separated by spaces, as systemd splits them.
        read -r -a check_args <<<"$args"
    else
        [[ -n "$gateway_token_file$broker_key" ]] ||
            die "--gateway needs the broker's key: --gateway-token-file FILE (from Setup > Gateways, with --broker URL) or --broker-key FILE"
        if [[ -n "$gateway_token_file" && -z "$broker" ]]; then
            die "--gateway-token-file goes with --broker URL (the broker that gave the token)"
        fi
        plain_word "$broker" --broker
        plain_word "$conf_dir" "with --gateway the install path"
        # Checked with the files where they are; installed with their copies. A flexVDI
        # configuration stays where it is (it names its own certificate files) and gives the
        # listen address unless --listen does.
        local -a flags_at=() flags_in=()
        if [[ -n "$flexvdi_config" ]]; then
            [[ -f "$flexvdi_config" ]] || die "--flexvdi-config $flexvdi_config is not a file"
            flexvdi_config="$(cd -- "$(dirname -- "$flexvdi_config")" && pwd -P)/$(basename -- "$flexvdi_config")"
            plain_word "$flexvdi_config" --flexvdi-config
            flags_at+=(--flexvdi-config "$flexvdi_config")
            flags_in+=(--flexvdi-config "$flexvdi_config")
        fi
        if [[ -z "$flexvdi_config" || -n "$listen_given" ]]; then
            flags_at+=(--listen "$listen")
            flags_in+=(--listen "$listen")
        fi
        if [[ -n "$broker" ]]; then flags_at+=(--broker "$broker"); flags_in+=(--broker "$broker"); fi
        local option file name
        for option in "${GATEWAY_FILES[@]}"; do
            name="${option%%:*}"
            file="$(given_file "$name")"
            [[ -n "$file" ]] || continue
            flags_at+=("--$name" "$file")
            flags_in+=("--$name" "$conf_dir/${option#*:}")
        done
        check_args=("${flags_at[@]}")
        args="${flags_in[*]}"
    fi
    checked="$("$new_bin" gateway "${check_args[@]}" --check)" ||
        die "the gateway's flags or files are not right (see above): fix them, then re-run; nothing was changed"
    live_listen="$(sed -n 's/^listen: //p' <<<"$checked")"
    say "gateway configuration OK; it will listen on $live_listen"

    ensure_service_user
    if [[ -n "$flexvdi_config" ]] && ! as_service_user test -r "$flexvdi_config"; then
        die "the $SERVICE_USER user cannot read $flexvdi_config, which the service reads where it is: chgrp $SERVICE_USER it and chmod g+r it (and the certificate files it names), then re-run"
    fi
    mkdir -p -- "$bin_dir" "$conf_dir"
    if [[ "$system_wide" -eq 1 ]]; then
        chown root:"$SERVICE_USER" "$conf_dir"
        chmod 0750 "$conf_dir"
    fi
    if [[ ! -e "$gateway_env" ]]; then
        local option file
        for option in "${GATEWAY_FILES[@]}"; do
            file="$(given_file "${option%%:*}")"
            [[ -z "$file" ]] || copy_conf_file "$file" "${option#*:}"
        done
        {
            cat <<'HEAD'
# Flags of `gatehouse gateway` for gatehouse-gateway.service, written by install.sh.
# Every flag: `gatehouse gateway --help`; check a change with `gatehouse gateway FLAGS --check`.
HEAD
            printf 'GATEHOUSE_GATEWAY_ARGS="%s"\n' "$args"
        } >"$work/gateway.env"
        copy_conf_file "$work/gateway.env" gateway.env
        say "wrote $gateway_env"
    fi

    if [[ -e "$target_bin" && "$use_systemd" -eq 1 ]] && systemctl is-active --quiet "$GATEWAY_SERVICE_NAME"; then
        say "stopping $GATEWAY_SERVICE_NAME.service"
        systemctl stop "$GATEWAY_SERVICE_NAME"
    fi
    install_binary

    if [[ "$use_systemd" -eq 1 ]]; then
        print_gateway_unit >"$work/gatehouse-gateway.service"
        start_service "$GATEWAY_SERVICE_NAME" "$work/gatehouse-gateway.service" "$GATEWAY_UNIT_PATH" \
            "$live_listen" /gateway/v1/health ""
        printf 'Gatehouse gateway: wss://%s/tunnel\n' "$live_listen"
    else
        start_cmd="$target_bin gateway $args"
        if [[ "$system_wide" -eq 1 ]]; then
            start_cmd="setpriv --reuid=$SERVICE_USER --regid=$SERVICE_USER --init-groups --inh-caps=+net_bind_service --ambient-caps=+net_bind_service $start_cmd"
        fi
        say "$new_version is installed; nothing was started"
        printf 'Start it with:\n  %s\n' "$start_cmd"
    fi
}

# Prints "PID COMMAND" for every process that runs the installed binary, or one it replaced
# (an upgrade renames the new one over it: the kernel then names the old one "… (deleted)").
binary_runners() {
    local real exe pid running
    real="$(readlink -f -- "$target_bin")"
    for exe in /proc/[0-9]*/exe; do
        running="$(readlink -- "$exe" 2>/dev/null)" || continue
        [[ "$running" == "$real" || "$running" == "$real (deleted)" ]] || continue
        pid="${exe#/proc/}"
        pid="${pid%/exe}"
        printf '%s %s\n' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    done
}

# Removes the role's service and, unless the other service still uses it, the binary. What the
# service's owner may want again (configuration, data, backups, the user) stays; the commands
# that remove it are printed.
uninstall() {
    local service unit other_unit runners what
    local -a kept=() remove=()
    if [[ "$role" == gateway ]]; then
        service="$GATEWAY_SERVICE_NAME" unit="$GATEWAY_UNIT_PATH" other_unit="$UNIT_PATH"
    else
        service="$SERVICE_NAME" unit="$UNIT_PATH" other_unit="$GATEWAY_UNIT_PATH"
    fi
    if [[ "$use_systemd" -eq 0 ]]; then
        other_unit=""
    elif [[ -e "$unit" ]]; then
        say "stopping and disabling $service.service"
        systemctl disable --now --quiet "$service" || true
        rm -f -- "$unit"
        systemctl daemon-reload
        say "removed $unit"
    else
        say "$service.service is not installed"
    fi

    if [[ ! -e "$target_bin" ]]; then
        say "$target_bin is not there"
    elif [[ -n "$other_unit" && -e "$other_unit" ]]; then
        say "keeping $target_bin: $(basename -- "$other_unit") runs it"
    else
        runners="$(binary_runners)"
        [[ -z "$runners" ]] ||
            die "$target_bin still runs; stop it, then re-run to remove it (the binary was not removed):"$'\n'"$runners"
        rm -f -- "$target_bin" "$target_bin.previous"
        say "removed $target_bin"
    fi

    if [[ "$role" == gateway ]]; then
        local option
        for option in gateway.env "${GATEWAY_FILES[@]}"; do
            [[ ! -e "$conf_dir/${option#*:}" ]] || kept+=("$conf_dir/${option#*:}")
        done
        remove=(rm -f -- "${kept[@]}")
        what="them"
    else
        [[ ! -e "$conf_dir" ]] || kept+=("$conf_dir")
        [[ ! -e "$data_dir" ]] || kept+=("$data_dir")
        remove=(rm -rf -- "${kept[@]}")
        what="them (the data folder holds the backups)"
    fi
    if [[ ${#kept[@]} -eq 0 ]]; then
        printf 'Gatehouse %s is uninstalled.\n' "$role"
        return
    fi
    printf 'Gatehouse %s is uninstalled. Kept, for installing again:\n' "$role"
    printf '  %s\n' "${kept[@]}"
    printf 'To remove %s too:\n  %s' "$what" "${remove[*]}"
    if [[ "$system_wide" -eq 1 && ! -e "$other_unit" ]] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
        printf ' && userdel %s' "$SERVICE_USER"
    fi
    printf '\n'
}

# The whole flow is one function, so a truncated download (curl … | bash) runs nothing.
main() {
    # -----------------------------------------------------------------------------------------
    # Arguments
    # -----------------------------------------------------------------------------------------
    binary=""
    archive=""
    prefix=""
    listen=""
    use_systemd=1
    role=broker
    print_only=0
    uninstall=0
    broker=""
    broker_ca=""
    broker_key=""
    gateway_token_file=""
    cert=""
    key=""
    flexvdi_config=""

    while [[ $# -gt 0 ]]; do
        # --name=VALUE is --name VALUE.
        if [[ "$1" == --*=* ]]; then
            set -- "${1%%=*}" "${1#*=}" "${@:2}"
        fi
        case "$1" in
            --binary | --archive | --prefix | --listen | --broker | --broker-ca | --broker-key | \
                --gateway-token-file | --cert | --key | --flexvdi-config)
                need_value "$@"
                name="${1#--}"
                printf -v "${name//-/_}" '%s' "$2"
                shift 2
                ;;
            --no-systemd)
                use_systemd=0
                shift
                ;;
            --gateway)
                role=gateway
                shift
                ;;
            --print-unit)
                print_only=1
                shift
                ;;
            --uninstall)
                uninstall=1
                shift
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
    done
    if [[ "$print_only" -eq 1 ]]; then
        if [[ "$role" == gateway ]]; then print_gateway_unit; else print_unit; fi
        exit 0
    fi
    gateway_settings="$broker$broker_ca$broker_key$gateway_token_file$cert$key$flexvdi_config"
    if [[ "$role" == broker && -n "$gateway_settings" ]]; then
        die "--broker, --broker-ca, --broker-key, --gateway-token-file, --cert, --key and --flexvdi-config go with --gateway"
    fi

    # -----------------------------------------------------------------------------------------
    # The machine
    # -----------------------------------------------------------------------------------------
    os="$(uname -s)"
    [[ "$os" == Linux ]] || die "Gatehouse runs on Linux only (this is $os)"

    case "$(uname -m)" in
        x86_64 | amd64) ;;
        aarch64 | arm64) ;;
        *) die "unsupported CPU architecture $(uname -m): Gatehouse is built for x86_64 and aarch64" ;;
    esac

    if [[ -n "$prefix" && "$use_systemd" -eq 1 ]]; then
        die "--prefix installs a private tree that the systemd unit does not point at: add --no-systemd"
    fi

    if [[ "$use_systemd" -eq 1 ]]; then
        if ! command -v systemctl >/dev/null 2>&1 || [[ ! -d /run/systemd/system ]]; then
            die "systemd is not running on this machine: re-run with --no-systemd (and start Gatehouse yourself)"
        fi
    fi

    command -v curl >/dev/null 2>&1 || die "curl is required (apt-get install curl)"

    if [[ -z "$prefix" && "$(id -u)" -ne 0 ]]; then
        die "installing system-wide needs root: run it with sudo (or use --prefix DIR --no-systemd)"
    fi

    # Paths: absolute, and free of characters that would need escaping inside a TOML string.
    if [[ -n "$prefix" ]]; then
        if [[ "$uninstall" -eq 1 && ! -d "$prefix" ]]; then
            die "--prefix $prefix is not a folder: nothing is installed there"
        fi
        mkdir -p -- "$prefix"
        prefix="$(cd -- "$prefix" && pwd -P)"
    fi
    bin_dir="${prefix:+$prefix/bin}"
    bin_dir="${bin_dir:-/usr/local/bin}"
    conf_dir="${prefix}/etc/gatehouse"
    conf_file="${conf_dir}/gatehouse.toml"
    data_dir="${prefix}/var/lib/gatehouse"
    backup_dir="${data_dir}/backups"
    target_bin="${bin_dir}/gatehouse"
    case "$data_dir$conf_file" in
        *\"* | *\\* | *$'\n'*) die "the install path must not contain quotes, backslashes or newlines: $prefix" ;;
    esac

    listen_given="$listen"
    if [[ -z "$listen" ]]; then
        if [[ -n "$prefix" ]]; then listen="0.0.0.0:8443"; else listen="0.0.0.0:443"; fi
    fi
    [[ "$listen" =~ ^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]+$ ]] ||
        die "--listen wants HOST:PORT (like 0.0.0.0:443 or [::]:443), got '$listen'"

    # Owner of what the server writes: the service user system-wide, the caller with --prefix.
    system_wide=0
    [[ -z "$prefix" ]] && system_wide=1

    if [[ "$uninstall" -eq 1 ]]; then
        [[ -z "$binary$archive$listen_given$gateway_settings" ]] ||
            die "--uninstall takes no binary source and no settings: only --gateway, --prefix DIR and --no-systemd"
        uninstall
        return
    fi

    work="$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-install.XXXXXX")"
    staged=""
    trap cleanup EXIT

    # -----------------------------------------------------------------------------------------
    # The binary: --binary, --archive, or a build of this checkout
    # -----------------------------------------------------------------------------------------
    script_path="${BASH_SOURCE[0]:-}"
    checkout=""
    if [[ -n "$script_path" && -f "$script_path" ]]; then
        candidate="$(cd -- "$(dirname -- "$script_path")/.." && pwd -P)"
        if [[ -f "$candidate/Cargo.toml" ]] && grep -q '^name = "gatehouse"' "$candidate/Cargo.toml"; then
            checkout="$candidate"
        fi
    fi

    new_bin="$work/gatehouse"
    if [[ -n "$binary" ]]; then
        [[ -f "$binary" && -x "$binary" ]] || die "--binary $binary is not an executable file"
        cp -- "$binary" "$new_bin"
    elif [[ -n "$archive" ]]; then
        # A local path is fine too.
        if [[ -f "$archive" ]]; then archive="file://$(cd -- "$(dirname -- "$archive")" && pwd -P)/$(basename -- "$archive")"; fi
        say "downloading $archive"
        curl -fsSL --proto '=https,file' -o "$work/release.tar.gz" -- "$archive" ||
            die "could not download $archive"
        mkdir -p "$work/release"
        tar -xzf "$work/release.tar.gz" -C "$work/release" --no-same-owner ||
            die "$archive is not a readable .tar.gz"
        found="$(find "$work/release" -type f -name gatehouse -print -quit)"
        [[ -n "$found" ]] || die "$archive does not contain a file named 'gatehouse'"
        mv -- "$found" "$new_bin"
    elif [[ -n "$checkout" ]]; then
        cargo_bin="$(command -v cargo || true)"
        for home in "${HOME:-}" "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)"; do
            if [[ -z "$cargo_bin" && -n "$home" && -x "$home/.cargo/bin/cargo" ]]; then
                cargo_bin="$home/.cargo/bin/cargo"
            fi
        done
        [[ -n "$cargo_bin" ]] ||
            die "building from $checkout needs cargo (https://rustup.rs), or pass --binary PATH / --archive URL"
        say "building $checkout with cargo build --release --locked"
        build=("$cargo_bin" build --release --locked)
        # Under sudo, build as the user who owns the checkout so target/ stays theirs.
        if [[ "$(id -u)" -eq 0 && -n "${SUDO_USER:-}" && "${SUDO_USER}" != root &&
            "$(stat -c %U -- "$checkout")" == "$SUDO_USER" ]]; then
            user_home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
            build=(runuser -u "$SUDO_USER" -- env "HOME=$user_home" "PATH=$user_home/.cargo/bin:$PATH" cargo build --release --locked)
        fi
        (cd -- "$checkout" && "${build[@]}") || die "cargo build failed"
        target_dir="${CARGO_TARGET_DIR:-target}"
        [[ "$target_dir" == /* ]] || target_dir="$checkout/$target_dir"
        cp -- "$target_dir/release/gatehouse" "$new_bin"
    else
        die "no checkout next to this script (was it piped into bash?): pass --archive URL of a release .tar.gz, or --binary PATH"
    fi
    chmod 0755 "$new_bin"

    new_version="$("$new_bin" version 2>/dev/null)" ||
        die "the new binary does not run on this machine (wrong architecture or not a gatehouse binary?)"
    [[ "$new_version" == gatehouse\ * ]] ||
        die "the new binary does not look like gatehouse: 'version' printed '$new_version'"

    if [[ "$role" == gateway ]]; then
        install_gateway
        return
    fi

    # -----------------------------------------------------------------------------------------
    # User and folders
    # -----------------------------------------------------------------------------------------
    ensure_service_user
    mkdir -p -- "$bin_dir" "$conf_dir"
    install -d -m 0750 -- "$data_dir" "$backup_dir"
    if [[ "$system_wide" -eq 1 ]]; then
        chown root:"$SERVICE_USER" "$conf_dir"
        chmod 0750 "$conf_dir"
        chown "$SERVICE_USER:$SERVICE_USER" "$data_dir" "$backup_dir"
    fi

    # -----------------------------------------------------------------------------------------
    # Configuration: written only when absent, always checked with the NEW binary before anything
    # running is touched
    # -----------------------------------------------------------------------------------------
    if [[ -e "$conf_file" ]]; then
        say "keeping the existing configuration $conf_file"
        "$new_bin" config check --config "$conf_file" ||
            die "$conf_file is not valid for $new_version (see above): fix it, then re-run; nothing was changed"
    else
        "$new_bin" config default >"$work/default.toml" || die "'$new_bin config default' failed"
        set_server_keys "$listen" "$data_dir" <"$work/default.toml" >"$work/gatehouse.toml"
        "$new_bin" config check --config "$work/gatehouse.toml" ||
            die "the generated configuration does not pass 'config check' (see above)"
        chmod 0640 "$work/gatehouse.toml"
        if [[ "$system_wide" -eq 1 ]]; then chown root:"$SERVICE_USER" "$work/gatehouse.toml"; fi
        # Same-folder rename: a concurrent reader sees the old (absent) or the whole new file.
        cp -p -- "$work/gatehouse.toml" "$conf_file.new.$$"
        mv -f -- "$conf_file.new.$$" "$conf_file"
        say "wrote $conf_file"
    fi

    # -----------------------------------------------------------------------------------------
    # Upgrade: stop, refuse if something still holds the data folder, back up with the OLD binary
    # -----------------------------------------------------------------------------------------
    was_active=0
    backup_file=""

    if [[ -e "$target_bin" ]]; then
        old_version="$("$target_bin" version 2>/dev/null || echo "gatehouse (unknown version)")"
        if [[ "$old_version" == "$new_version" ]]; then
            say "re-installing $new_version in place"
        else
            say "upgrading $old_version to $new_version"
        fi
        if [[ "$use_systemd" -eq 1 ]] && systemctl is-active --quiet "$SERVICE_NAME"; then
            say "stopping $SERVICE_NAME.service"
            systemctl stop "$SERVICE_NAME"
            was_active=1
        fi
        holders="$(data_holders)"
        if [[ -n "$holders" ]]; then
            restart_old
            die "a running server holds $data_dir; stop it first, then re-run (nothing was changed):"$'\n'"$holders"
        fi
        if has_data; then
            stamp="$(date -u +%Y%m%dT%H%M%SZ)"
            backup_file="$backup_dir/pre-upgrade-$stamp.ghbak"
            n=1
            while [[ -e "$backup_file" ]]; do
                backup_file="$backup_dir/pre-upgrade-$stamp-$n.ghbak"
                n=$((n + 1))
            done
            say "backing up $data_dir to $backup_file"
            if ! (cd / && as_service_user "$target_bin" backup export --data "$data_dir" --out "$backup_file"); then
                restart_old
                die "the pre-upgrade backup failed (see above); nothing was changed"
            fi
        fi
    fi

    install_binary

    # -----------------------------------------------------------------------------------------
    # Start (systemd), or say how to start
    # -----------------------------------------------------------------------------------------
    live_listen="$(configured_listen)"
    live_listen="${live_listen:-$listen}"

    if [[ "$use_systemd" -eq 1 ]]; then
        print_unit >"$work/gatehouse.service"
        start_service "$SERVICE_NAME" "$work/gatehouse.service" "$UNIT_PATH" "$live_listen" /healthz \
            "${backup_file:+; the data as it was before this upgrade is in $backup_file}"
        printf 'Gatehouse console: %s\n' "$(console_url "$live_listen")"
    else
        if [[ "$system_wide" -eq 1 ]]; then
            start_cmd="setpriv --reuid=$SERVICE_USER --regid=$SERVICE_USER --init-groups --inh-caps=+net_bind_service --ambient-caps=+net_bind_service $target_bin serve --config $conf_file"
        else
            start_cmd="$target_bin serve --config $conf_file"
        fi
        say "$new_version is installed; nothing was started"
        printf 'Start it with:\n  %s\n' "$start_cmd"
        printf 'Then open: %s\n' "$(console_url "$live_listen")"
    fi
}

main "$@"
