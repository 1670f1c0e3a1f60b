#!/usr/bin/env bash
# bench/install.sh - install what the benchmark harness needs (Debian/Ubuntu, as root). Idempotent.
#   apt : s3fs (s3fs-fuse, a peer mount) fio (random-read IOPS) fuse3
#   pip : bench/requirements.txt into the project venv ($MOUNTD_VENV, default .venv), after mountd itself
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MOUNTD_VENV:-$PWD/.venv}"
log() { printf 'bench/install.sh: %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=""
for p in s3fs fio fuse3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
[ -x "$VENV/bin/python" ] || { echo "bench/install.sh: no venv at $VENV; run scripts/install.sh first" >&2; exit 1; }
"$VENV/bin/pip" install -q --disable-pip-version-check -r bench/requirements.txt
