#!/usr/bin/env bash
# install-system.sh - make the mountd installed by install.sh usable system-wide (run as root):
#   /usr/local/bin/mountd and /sbin/mount.mountd   links to the virtual environment's entry points
#   /etc/systemd/system/mountd@.service            one service per repository config /etc/mountd/NAME.toml
#   /etc/systemd/system/mountd-docker-plugin.service
#   /etc/mountd/                                   created (0700: configs may hold credentials)
# ROOT=DIR installs below DIR instead of / (packaging, tests). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MOUNTD_VENV:-$PWD/.venv}"
ROOT="${ROOT:-}"
log() { printf 'install-system.sh: %s\n' "$*" >&2; }
for exe in mountd mount.mountd; do
  [ -x "$VENV/bin/$exe" ] || { log "$VENV/bin/$exe is missing: run scripts/install.sh first"; exit 1; }
done
install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/sbin" "$ROOT/etc/systemd/system"
install -d -m 0700 "$ROOT/etc/mountd"
ln -sfn "$VENV/bin/mountd" "$ROOT/usr/local/bin/mountd"
ln -sfn "$VENV/bin/mount.mountd" "$ROOT/sbin/mount.mountd"
install -m 0644 systemd/mountd@.service systemd/mountd-docker-plugin.service "$ROOT/etc/systemd/system/"
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
log "installed: $ROOT/usr/local/bin/mountd, $ROOT/sbin/mount.mountd, units in $ROOT/etc/systemd/system"
