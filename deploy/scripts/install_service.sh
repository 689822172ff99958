#!/usr/bin/env bash
# Install product-classifier.service: `make serve RUN=... PORT=...` as a systemd service
# that runs as a non-root user, restarts on failure and starts at boot.
#
# Every setting is an environment variable with a default; see usage() below or --help.
# Run it with sudo on the serving machine after 'make export RUN=...'.
set -euo pipefail

SERVICE_NAME="${SERVICE_NAME:-product-classifier}"
SERVICE_USER="${SERVICE_USER:-${SUDO_USER:-$(id -un)}}"
PROJECT_DIR="${PROJECT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
PORT="${PORT:-8501}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
MAKE="${MAKE:-$(command -v make || true)}"
SYSTEMCTL="${SYSTEMCTL:-systemctl}"

usage() {
    cat <<USAGE
Usage: sudo deploy/scripts/install_service.sh RUN [--help]

RUN is the run folder to serve (absolute, or relative to PROJECT_DIR). The script writes
UNIT_DIR/SERVICE_NAME.service from deploy/scripts/product-classifier.service, then runs
'systemctl daemon-reload' and 'systemctl enable --now SERVICE_NAME'.

Settings (environment variables, current value in brackets):
  SERVICE_NAME  unit name [$SERVICE_NAME]
  SERVICE_USER  user the server runs as; root is rejected [$SERVICE_USER]
  PROJECT_DIR   project checkout with .venv [$PROJECT_DIR]
  PORT          port of make serve [$PORT]
  UNIT_DIR      where the unit file goes [$UNIT_DIR]
  MAKE          absolute path of make [$MAKE]
  SYSTEMCTL     systemctl command [$SYSTEMCTL]
USAGE
}

fail() {
    echo "install_service.sh: $*" >&2
    exit 2
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
[[ $# -eq 1 ]] || fail "expected one RUN argument, received $#; see --help"
if ! command -v "$SYSTEMCTL" >/dev/null 2>&1; then
    echo "install_service.sh: $SYSTEMCTL not found on PATH; this script needs systemd" >&2
    exit 127
fi

# 1. Check the settings: the unit file takes them as they are, so characters that systemd
#    would read as specifiers (%), variables ($) or separators (spaces) are rejected.
run="$1"
[[ "$run" == /* ]] || run="$PROJECT_DIR/$run"
for value in "$run" "$PROJECT_DIR" "$MAKE"; do
    [[ "$value" =~ ^/[A-Za-z0-9._/-]*$ ]] ||
        fail "'$value' must be an absolute path of letters, digits, '.', '_', '-' and '/'"
done
[[ "$SERVICE_USER" =~ ^[a-z_][a-z0-9_-]*$ ]] || fail "invalid SERVICE_USER '$SERVICE_USER'"
[[ "$SERVICE_USER" != "root" ]] ||
    fail "the server must not run as root; set SERVICE_USER to the user who owns $PROJECT_DIR"
[[ "$PORT" =~ ^[0-9]+$ ]] || fail "PORT must be a number, received '$PORT'"
[[ -f "$run/config.json" ]] || fail "$run is not a run folder (no config.json); see 'make compare'"
[[ -x "$MAKE" ]] || fail "make not found; install it or set MAKE to its absolute path"

# 2. Fill in the template and install it atomically.
template="$PROJECT_DIR/deploy/scripts/product-classifier.service"
unit="$UNIT_DIR/$SERVICE_NAME.service"
mkdir -p "$UNIT_DIR"
sed -e "s|@PROJECT_DIR@|$PROJECT_DIR|g" -e "s|@SERVICE_USER@|$SERVICE_USER|g" \
    -e "s|@MAKE@|$MAKE|g" -e "s|@RUN@|$run|g" -e "s|@PORT@|$PORT|g" \
    "$template" >"$unit.tmp"
mv "$unit.tmp" "$unit"
echo "install_service.sh: wrote $unit (serving $run on port $PORT as $SERVICE_USER)"

# 3. Load it, start it now and at every boot.
"$SYSTEMCTL" daemon-reload
"$SYSTEMCTL" enable --now "$SERVICE_NAME"
cat <<NEXT
Status: systemctl status $SERVICE_NAME    Logs: journalctl -u $SERVICE_NAME -f
Stop:   systemctl stop $SERVICE_NAME (SIGTERM, then SIGKILL after 30 s)
NEXT
