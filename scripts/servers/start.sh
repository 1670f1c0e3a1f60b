#!/usr/bin/env bash
# servers/start.sh KIND DIR [PORT] - start a test object-storage server on 127.0.0.1, detached.
#   KIND: s3 (moto, in memory), s3-rclone (rclone serve s3 over DIR/data, persistent), azurite, gcs
# Prints KEY='VALUE' lines (endpoint, credentials, PID_FILE) and writes them to DIR/<kind>.env;
# `set -a; eval "$(scripts/servers/start.sh s3 /tmp/s3)"` exports them. Stop: scripts/servers/stop.sh "$PID_FILE".
# The same code (tests/servers.py) starts the servers inside the test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${MOUNTD_VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" -m tests.servers start "$@"
