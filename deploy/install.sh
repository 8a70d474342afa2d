#!/usr/bin/env bash
# Install gridcharge as an appliance on Raspberry Pi OS (Bookworm, 32- and 64-bit).
#
#   sudo deploy/install.sh                      install, or upgrade from this checkout
#   sudo deploy/install.sh --uninstall          remove code, unit and udev rules; keep config and state
#   sudo deploy/install.sh --uninstall --purge  remove everything, including config, state and user
#
# What it does (every step is idempotent; re-running upgrades the code and keeps config and state):
#   - system user "gridcharge" in the groups dialout (serial ports) and gpio (GPIO chips)
#   - /opt/gridcharge/venv: a virtualenv with gridcharge installed from this checkout
#   - /usr/local/bin/gridcharge, a link to the venv's command (so "sudo gridcharge ..." works)
#   - /var/lib/gridcharge (state), the systemd unit and the udev rules
#   - first install (no /etc/gridcharge/config.yaml yet): the config from
#     deploy/config.first-install.yaml, which describes no devices, with a fresh random admin
#     password stored as a hash (the password is printed once); mode 0640 root:gridcharge. The
#     service is neither enabled nor started: it must control nothing until the electrician has
#     described the site. The last lines printed are the API URL, user, password and next steps.
#   - upgrade (the config exists): the config is kept byte for byte; the service is restarted if it
#     is enabled, and left alone (not enabled) if it never was
#
# --root DIR prefixes every path with DIR and changes nothing outside it: no user accounts, no apt,
# no systemctl, no udevadm, no chown (each is printed as "skipped (--root): ..."). The tests use it.
# The venv it builds there works for running gridcharge from DIR but is not relocatable: to build
# an SD-card image, run this script inside the image (chroot) instead.
set -euo pipefail
umask 022

readonly SERVICE=gridcharge.service
readonly SVC_USER=gridcharge
readonly RULE_FILES=(99-gridcharge-serial.rules 99-gridcharge-gpio.rules)
readonly LOCAL_RULES=98-gridcharge-local.rules   # the electrician's own names; never written here
readonly COMMAND_LINK=/usr/local/bin/gridcharge    # on sudo's PATH: "sudo gridcharge check-config"
readonly VENV_COMMAND=/opt/gridcharge/venv/bin/gridcharge
readonly LIVE_CONFIG=/etc/gridcharge/config.yaml   # the path on the target system (also with --root)

usage() {
    cat <<'EOF'
usage: install.sh [--root DIR] [--no-venv] [--python PATH]
       install.sh --uninstall [--purge] [--root DIR]

  --root DIR     install into DIR instead of / (for tests): no system changes outside DIR
  --no-venv      do not create or upgrade the virtualenv (fast test runs; uses an existing venv,
                 or --python, for hashing the password and checking the config)
  --python PATH  interpreter for the virtualenv (default /usr/bin/python3)
  --uninstall    stop and disable the service; remove the unit, the udev rules and /opt/gridcharge;
                 keep /etc/gridcharge and /var/lib/gridcharge
  --purge        with --uninstall: also remove /etc/gridcharge, /var/lib/gridcharge, the local
                 udev rules and the gridcharge user
EOF
}

log() { printf '%s\n' "$*"; }
# One line per phase, so whoever watches a slow Pi sees what it is doing and that it is working.
phase() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
skip() { log "skipped (--root): $*"; }

# Run a command that changes the running system (accounts, services, udev, apt); with --root only
# report it, so a test run cannot touch the machine it runs on.
system() {
    if [[ -n $ROOT ]]; then
        skip "$*"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------------------------------- options
ROOT=""
NO_VENV=0
UNINSTALL=0
PURGE=0
PYTHON=""

parse_args() {
    local original_args=("$@")
    while (($#)); do
        case $1 in
            --root) (($# >= 2)) || { usage >&2; exit 2; }; ROOT=$2; shift ;;
            --root=*) ROOT=${1#--root=} ;;
            --no-venv) NO_VENV=1 ;;
            --python) (($# >= 2)) || { usage >&2; exit 2; }; PYTHON=$2; shift ;;
            --python=*) PYTHON=${1#--python=} ;;
            --uninstall) UNINSTALL=1 ;;
            --purge) PURGE=1 ;;
            -h|--help) usage; exit 0 ;;
            *) printf 'install.sh: unknown option %s\n' "$1" >&2; usage >&2; exit 2 ;;
        esac
        shift
    done
    if ((PURGE && !UNINSTALL)); then
        printf 'install.sh: --purge only goes with --uninstall\n' >&2
        exit 2
    fi
    if [[ -n $ROOT ]]; then
        [[ -d $ROOT ]] || die "--root $ROOT: no such directory"
        ROOT=$(cd -- "$ROOT" && pwd -P)
        [[ $ROOT == / ]] && ROOT=""
    fi
    if [[ -z $ROOT && $EUID -ne 0 ]]; then
        die "run as root: sudo $0 ${original_args[*]}"
    fi
    if [[ -z $PYTHON ]]; then
        # Debian's interpreter: python3-lgpio from apt is built for it (see choose_lgpio_source).
        if [[ -x /usr/bin/python3 ]]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
    elif [[ $PYTHON == */* ]]; then   # a relative path must survive the "cd /" in main
        PYTHON=$(cd -- "$(dirname -- "$PYTHON")" && pwd)/$(basename -- "$PYTHON")
    fi
}

set_paths() {
    SRC=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
    OPT_DIR=$ROOT/opt/gridcharge
    VENV=$OPT_DIR/venv
    ETC_DIR=$ROOT/etc/gridcharge
    CONFIG=$ETC_DIR/config.yaml
    STATE_DIR=$ROOT/var/lib/gridcharge
    UNIT_DIR=$ROOT/etc/systemd/system
    RULES_DIR=$ROOT/etc/udev/rules.d
}

booted_with_systemd() { [[ -z $ROOT && -d /run/systemd/system ]]; }

# ---------------------------------------------------------------------------------- system parts
ensure_accounts() {
    phase "system user $SVC_USER (groups dialout, gpio)"
    if [[ -n $ROOT ]]; then
        skip "groupadd --system gpio (if missing)"
        skip "useradd --system --user-group $SVC_USER (if missing)"
        skip "usermod --append --groups dialout,gpio $SVC_USER"
        return
    fi
    local group
    for group in dialout gpio; do   # gpio exists on Raspberry Pi OS, not on plain Debian
        getent group "$group" >/dev/null || groupadd --system "$group"
    done
    if ! id -u "$SVC_USER" >/dev/null 2>&1; then
        local group_opt=--user-group   # a group left over from an earlier install is reused
        getent group "$SVC_USER" >/dev/null && group_opt=--gid=$SVC_USER
        useradd --system "$group_opt" --home-dir /var/lib/gridcharge --no-create-home \
            --shell /usr/sbin/nologin --comment "gridcharge EV charging manager" "$SVC_USER"
        log "created system user $SVC_USER"
    fi
    usermod --append --groups dialout,gpio "$SVC_USER"
}

is_arm() {
    # dpkg's architecture, not uname -m: 32-bit Raspberry Pi OS runs a 64-bit kernel on a Pi 4/5.
    local arch
    arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
    [[ $arch == arm* || $arch == aarch64 ]]
}

deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "$@"; }
}

# GPIO on a Pi 5 needs lgpio (gpiozero tries it first; RPi.GPIO does not work there). Decision:
# Raspberry Pi OS's own python3-lgpio from apt, with a venv that sees system packages. It exists
# for armhf and arm64 alike and matches the OS's kernel and liblgpio, whereas PyPI has lgpio wheels
# for aarch64 only (32-bit armv7l would compile it from source). Packages in the venv still win
# over system ones, so our pinned versions are what runs. Off Raspberry Pi OS (no python3-lgpio in
# apt) it falls back to "pip install lgpio" in the venv. Not ARM: no GPIO, nothing to install.
LGPIO_SOURCE=none   # apt | pip | none
choose_lgpio_source() {
    is_arm || return 0
    phase "GPIO library python3-lgpio (apt)"
    if [[ -n $ROOT ]]; then
        skip "apt-get install python3-lgpio"
        LGPIO_SOURCE=apt
    elif deb_installed python3-lgpio || apt_install python3-lgpio; then
        LGPIO_SOURCE=apt
    else
        warn "python3-lgpio is not in apt (not Raspberry Pi OS?): trying pip install lgpio"
        LGPIO_SOURCE=pip
    fi
}

ensure_python_venv() {
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null && return 0
    [[ -z $ROOT ]] || die "$PYTHON has no venv module (apt-get install python3-venv)"
    apt_install python3-venv
}

# ------------------------------------------------------------------------------------ virtualenv
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

# Copy the checkout without build artefacts, so pip builds in a scratch directory instead of
# writing build/ and *.egg-info (as root) into the user's checkout.
stage_source() {
    tar -C "$SRC" -cf - \
        --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
        --exclude=.hypothesis --exclude=.mypy_cache --exclude=.ruff_cache . \
        | tar -C "$1" -xf -
}

install_venv() {
    local venv_args=()
    [[ $LGPIO_SOURCE == apt ]] && venv_args+=(--system-site-packages)
    mkdir -p -- "$OPT_DIR"
    if [[ -x $VENV/bin/python && "$(py_version "$VENV/bin/python")" == "$(py_version "$PYTHON")" ]]; then
        # Keep the venv (upgrade in place); this only rewrites pyvenv.cfg.
        phase "updating the virtualenv $VENV"
        "$PYTHON" -m venv --without-pip "${venv_args[@]}" "$VENV"
    else
        phase "creating the virtualenv $VENV with $PYTHON"
        "$PYTHON" -m venv --clear "${venv_args[@]}" "$VENV"
    fi
    local stage
    stage=$(mktemp -d)
    STAGE_DIRS+=("$stage")
    stage_source "$stage"
    # pip's own lines (and its download bars on a terminal) show it is working: no --quiet.
    phase "installing gridcharge and its dependencies (pip, about a minute)"
    "$VENV/bin/python" -m pip install --upgrade --disable-pip-version-check "$stage"
    if [[ $LGPIO_SOURCE == pip ]]; then
        phase "installing lgpio (pip)"
        "$VENV/bin/python" -m pip install --disable-pip-version-check lgpio \
            || warn "pip install lgpio failed: GPIO inputs will have no value (fail-safe limits apply)"
    fi
    install -m 0644 -- "$SRC/README.md" "$OPT_DIR/README.md"
    install -d -m 0755 -- "$OPT_DIR/docs"
    install -m 0644 -- "$SRC"/docs/*.md "$OPT_DIR/docs/"
    install -m 0644 -- "$SRC/deploy/config.example.yaml" "$OPT_DIR/config.example.yaml"
}

STAGE_DIRS=()
cleanup() {
    local dir
    for dir in "${STAGE_DIRS[@]}"; do rm -rf -- "$dir"; done
    [[ -z ${CONFIG_TMP:-} ]] || rm -f -- "$CONFIG_TMP"
}
trap cleanup EXIT

# The interpreter that hashes the password and checks the config: the venv's, or with --no-venv
# and no venv yet, --python (which then needs werkzeug and gridcharge importable).
app_python() {
    if [[ -x $VENV/bin/python ]]; then printf '%s\n' "$VENV/bin/python"; else printf '%s\n' "$PYTHON"; fi
}

# --------------------------------------------------------------------------------------- config
# make_config TEMPLATE TARGET: write TARGET (mode 0640) from TEMPLATE with a fresh admin password
# stored as a werkzeug scrypt hash in place of its one 'password: "..."' line; print "USER PASSWORD".
make_config() {
    "$APP_PY" - "$1" "$2" <<'PY'
import os
import re
import secrets
import sys

from werkzeug.security import generate_password_hash

template, target = sys.argv[1], sys.argv[2]
with open(template, encoding="utf-8") as f:
    text = f.read()

# The password line and the comment lines that continue it.
password_line = re.compile(r'^(?P<indent>[ \t]+)password:[ \t]*"[^"\n]*"[^\n]*\n(?:[ \t]+#[^\n]*\n)*', re.M)
if len(password_line.findall(text)) != 1:
    sys.exit(f"{template}: expected exactly one 'password: \"...\"' line under http:")
password = secrets.token_urlsafe(12)  # 16 characters from A-Z a-z 0-9 _ -
pw_hash = generate_password_hash(password, method="scrypt")

def hashed(match: re.Match) -> str:
    indent = match["indent"]
    return (f'{indent}password_hash: "{pw_hash}"\n'
            f"{indent}# set by install.sh: a random password, shown once at install time. To change it,\n"
            f"{indent}# put the hash that  gridcharge hash-password  prints here, then restart gridcharge.\n")

text = password_line.sub(hashed, text)

user = re.search(r'^[ \t]+user:[ \t]*"?([^"\s#]+)', text, re.M)
fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(text)
os.chmod(target, 0o640)  # whatever the umask
print(user[1] if user else "admin", password)
PY
}

# check_config PATH: gridcharge check-config; its warnings (serial port, GPIO, TLS files absent on
# this machine) are fine, errors are not.
check_config() {
    if ((NO_VENV)) && ! "$APP_PY" -c 'import controller.cli' 2>/dev/null; then
        log "skipped (--no-venv): gridcharge check-config (no gridcharge in $APP_PY)"
        return 0
    fi
    log "gridcharge check-config --config $1"
    "$APP_PY" -m controller.cli check-config --config "$1" 2>&1 | sed 's/^/    /'
    return "${PIPESTATUS[0]}"
}

ADMIN_USER=""
ADMIN_PASSWORD=""
CONFIG_TMP=""
FIRST_INSTALL=0   # 1 when this run wrote the config: the site is not described yet
install_config() {
    install -d -m 0755 -- "$ETC_DIR"
    install -d -m 0750 -- "$ETC_DIR/tls"
    system chown "root:$SVC_USER" "$ETC_DIR/tls"
    if [[ -e $CONFIG ]]; then
        phase "config: keeping $CONFIG as it is"
        log "keeping existing $CONFIG"
        check_config "$CONFIG" \
            || warn "$CONFIG has errors: the service will not start until they are fixed"
        return 0
    fi
    phase "config: writing $CONFIG for a first install (no devices yet, a random admin password)"
    "$APP_PY" -c 'import werkzeug.security' 2>/dev/null \
        || die "$APP_PY cannot import werkzeug: run without --no-venv, or pass --python"
    CONFIG_TMP=$ETC_DIR/.config.yaml.new
    rm -f -- "$CONFIG_TMP"
    local credentials
    credentials=$(make_config "$SRC/deploy/config.first-install.yaml" "$CONFIG_TMP")
    read -r ADMIN_USER ADMIN_PASSWORD <<<"$credentials"
    system chown "root:$SVC_USER" "$CONFIG_TMP"
    check_config "$CONFIG_TMP" || die "the generated config does not pass check-config (a bug)"
    mv -f -- "$CONFIG_TMP" "$CONFIG"
    CONFIG_TMP=""
    FIRST_INSTALL=1
    log "wrote $CONFIG (mode 0640, admin password hashed)"
}

# api_url: the LAN API's address as a browser or curl on the LAN would use it: the config's
# http.listen, with a wildcard address ("0.0.0.0", "::") replaced by this machine's address on
# its default route. Prints nothing when the config has no http section.
api_url() {
    "$APP_PY" - "$CONFIG" <<'PY' 2>/dev/null || printf '%s\n' "http://<this host's address>/cnf (see http.listen in the config)"
import socket
import sys

from controller.config import load_config

http = load_config(sys.argv[1]).http
if http is None:
    sys.exit(0)
host = http.host
if host in ("", "0.0.0.0", "::"):
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing: it only picks the route
            host = probe.getsockname()[0]
    except OSError:  # no default route: the name is the best guess left
        host = socket.gethostname()
print(f"http://[{host}]:{http.port}/cnf" if ":" in host else f"http://{host}:{http.port}/cnf")
PY
}

# ---------------------------------------------------------------------------------- files, state
install_files() {
    phase "systemd unit, udev rules, state directory, $COMMAND_LINK"
    install -D -m 0644 -- "$SRC/deploy/gridcharge.service" "$UNIT_DIR/$SERVICE"
    local rule
    for rule in "${RULE_FILES[@]}"; do
        install -D -m 0644 -- "$SRC/udev/$rule" "$RULES_DIR/$rule"
    done
    # systemd's StateDirectory= would create it too; doing it here lets the first start (and a
    # --root install) find it with the right owner and mode. Its contents are kept.
    install -d -m 0750 -- "$STATE_DIR"
    system chown "$SVC_USER:$SVC_USER" "$STATE_DIR"
    install_command_link
}

our_command_link() { [[ -L $1 && "$(readlink -- "$1")" == "$VENV_COMMAND" ]]; }

# /usr/local/bin/gridcharge -> the venv's command, so the README's "sudo gridcharge ..." works
# (sudo's PATH has /usr/local/bin). Anything else already there is someone else's: left alone.
install_command_link() {
    local link=$ROOT$COMMAND_LINK
    if our_command_link "$link"; then
        return 0
    elif [[ -e $link || -L $link ]]; then
        warn "$link exists and is not gridcharge's link: left alone; use $VENV_COMMAND instead"
    else
        install -d -m 0755 -- "$(dirname -- "$link")"
        ln -s -- "$VENV_COMMAND" "$link"
    fi
}

apply_udev_rules() {
    phase "applying the udev rules"
    if [[ -n $ROOT ]]; then
        skip "udevadm control --reload-rules; udevadm trigger (tty, usb-serial, gpio)"
    elif command -v udevadm >/dev/null && udevadm control --reload-rules 2>/dev/null; then
        udevadm trigger --action=change --subsystem-match=tty --subsystem-match=usb-serial \
            --subsystem-match=gpio || true
    else
        log "udev is not running: the rules apply from the next boot"
    fi
}

# service_enabled: is the unit enabled, on this system or inside --root DIR? Only reads.
service_enabled() {
    if command -v systemctl >/dev/null; then   # works offline too (chroot, --root)
        systemctl ${ROOT:+"--root=$ROOT"} is-enabled --quiet "$SERVICE" 2>/dev/null
    else
        [[ -L $UNIT_DIR/multi-user.target.wants/$SERVICE ]]
    fi
}

# A first install enables and starts nothing: its config describes no site, and the electrician
# enables the service once the site is described and checked. An upgrade restarts an enabled
# service with the new code and leaves one that was never enabled off.
SERVICE_ENABLED=0
start_service() {
    phase "service $SERVICE"
    if [[ -n $ROOT ]]; then
        skip "systemctl daemon-reload"
    elif booted_with_systemd; then
        systemctl daemon-reload
    fi
    if ((FIRST_INSTALL)); then
        log "$SERVICE is not enabled and not started: the site is not described yet (next steps below)"
        return 0
    fi
    if ! service_enabled; then
        log "$SERVICE was never enabled: it is not enabled or started now either (next steps below)"
        return 0
    fi
    SERVICE_ENABLED=1
    if [[ -n $ROOT ]]; then
        skip "systemctl restart $SERVICE"
    elif ! booted_with_systemd; then
        log "systemd is not running here (chroot?): $SERVICE stays enabled and starts at the next boot"
    elif systemctl restart "$SERVICE"; then
        # restart, not start: an upgrade must replace the running code. Type=notify makes this
        # wait for the first complete control cycle (READY=1).
        log "$SERVICE is running"
    else
        warn "$SERVICE did not start; see: journalctl -u gridcharge -e"
    fi
}

# The installer's last lines: where the API answers, the credentials (first install only: the
# password exists nowhere else), and what to do next.
summary() {
    local url
    url=$(api_url)
    log ""
    if ((FIRST_INSTALL)); then
        log "gridcharge is installed. It controls nothing yet: the service stays off until the site is described."
    else
        log "gridcharge is upgraded; $LIVE_CONFIG is kept as it was."
    fi
    log ""
    log "  HTTP API: ${url:-none (the config has no http: section)}"
    if [[ $url == http://*/cnf ]]; then
        log "  status page: ${url%cnf} (a browser on the same network, same user and password)"
    fi
    if [[ -n $ADMIN_PASSWORD ]]; then
        log "  user:     $ADMIN_USER"
        log "  password: $ADMIN_PASSWORD"
        log "  Write the password down now: it is shown only this once (the config holds only its hash)."
    fi
    if ((SERVICE_ENABLED)); then
        log "  logs:     journalctl -u gridcharge -f"
    else
        log ""
        log "Next steps:"
        log "  1. edit $LIVE_CONFIG (meters, chargers, inputs)"
        log "  2. sudo gridcharge check-config"
        log "  3. sudo systemctl enable --now gridcharge"
    fi
}

do_install() {
    [[ -f $SRC/setup.cfg && -f $SRC/deploy/config.first-install.yaml ]] \
        || die "$SRC does not look like a gridcharge checkout"
    ensure_accounts
    if ((NO_VENV)); then
        phase "virtualenv $VENV"
        log "skipped (--no-venv): virtualenv $VENV"
    else
        choose_lgpio_source
        ensure_python_venv
        install_venv
    fi
    APP_PY=$(app_python)
    install_files
    install_config
    apply_udev_rules
    start_service
    summary
}

# ------------------------------------------------------------------------------------ uninstall
do_uninstall() {
    if [[ -n $ROOT ]]; then
        skip "systemctl disable --now $SERVICE"
    elif booted_with_systemd; then
        systemctl disable --now "$SERVICE" 2>/dev/null || true
    else
        systemctl disable "$SERVICE" 2>/dev/null || true
    fi
    rm -f -- "$UNIT_DIR/$SERVICE"
    local rule
    for rule in "${RULE_FILES[@]}"; do rm -f -- "$RULES_DIR/$rule"; done
    rm -rf -- "$OPT_DIR"
    if our_command_link "$ROOT$COMMAND_LINK"; then rm -f -- "$ROOT$COMMAND_LINK"; fi
    if ((PURGE)); then
        rm -rf -- "$ETC_DIR" "$STATE_DIR" "$UNIT_DIR/$SERVICE.d"
        rm -f -- "$RULES_DIR/$LOCAL_RULES"
        if [[ -n $ROOT ]]; then
            skip "userdel $SVC_USER"
        elif id -u "$SVC_USER" >/dev/null 2>&1; then
            userdel "$SVC_USER" || warn "could not remove the user $SVC_USER"
        fi
        log "removed gridcharge, its config, its state and its user"
    else
        log "removed gridcharge; kept $ETC_DIR and $STATE_DIR (--uninstall --purge removes them)"
    fi
    if booted_with_systemd; then systemctl daemon-reload; fi
    if [[ -n $ROOT ]]; then
        skip "systemctl daemon-reload; udevadm control --reload-rules"
    elif command -v udevadm >/dev/null; then
        udevadm control --reload-rules 2>/dev/null || true
    fi
}

main() {
    parse_args "$@"
    set_paths
    cd /   # so "python -m controller.cli" imports the installed package, never a checkout in cwd
    if ((UNINSTALL)); then do_uninstall; else do_install; fi
}

main "$@"
