#!/usr/bin/env bash
# install.sh [--test] - set up everything mountd needs on a Debian/Ubuntu machine (run as root).
#   system : fuse3 libfuse3-dev pkg-config gcc python3-venv (only what is missing)
#   python : a virtual environment at $MOUNTD_VENV (default: .venv in the checkout) with mountd,
#            and pyfuse3 rebuilt with FUSE passthrough (scripts/build-pyfuse3-passthrough.sh)
#   --test : also the test tools (pytest, hypothesis, ruff) and the programs the tests drive,
#            among them docker.io and busybox-static (a real dockerd for tests/test_docker_real.py)
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MOUNTD_VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"
WITH_TEST=0; [ "${1:-}" = "--test" ] && WITH_TEST=1
log() { printf 'install.sh: %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

pkgs="fuse3 libfuse3-dev pkg-config gcc"
[ "$WITH_TEST" = 1 ] && pkgs="$pkgs rsync sqlite3 attr git zip tar systemd mount"
# dockerd, containerd and runc, started by hand by the tests; busybox-static is their image (~15 s)
[ "$WITH_TEST" = 1 ] && pkgs="$pkgs docker.io busybox-static"
[ "$WITH_TEST" = 1 ] && { command -v npm >/dev/null 2>&1 || pkgs="$pkgs nodejs npm"; }
command -v "$PYTHON" >/dev/null 2>&1 || pkgs="$pkgs python3 python3-dev"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || pkgs="$pkgs python3-venv python3-dev"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# pyfuse3 with FUSE passthrough (static libfuse 3.17 from Debian's source; ~35 s once, cached in .build/),
# before mountd: it then satisfies mountd's pyfuse3 requirement and PyPI's pyfuse3 (an sdist only)
# is not compiled just to be replaced. It is the only Python package built from source; the rest
# comes as wheels.
bash scripts/build-pyfuse3-passthrough.sh "$VENV/bin/python" ||
  log "warning: pyfuse3 with passthrough did not build; mountd works without it, writes are slower"
extra=""; [ "$WITH_TEST" = 1 ] && extra="[test]"
"$VENV/bin/pip" install -q --disable-pip-version-check -e ".$extra"
# an editable install compiles no bytecode, and where PYTHONDONTWRITEBYTECODE is set (as on the
# machines this was measured on) every start compiled mountd again: 0.09 s of the 0.3-0.4 s a
# mount takes to be ready. A stale .pyc is simply recompiled in memory after an edit.
"$VENV/bin/python" -m compileall -q mountd >/dev/null
# test servers: Azurite (Azure Blob emulator) from npm into .npm/ of the checkout (git-ignored)
if [ "$WITH_TEST" = 1 ]; then bash scripts/servers/install.sh; fi
# benchmark harness (its quick mode is part of the tests): s3fs-fuse, fio, matplotlib
if [ "$WITH_TEST" = 1 ]; then bash bench/install.sh; fi
log "ready: $VENV/bin/mountd"
