#!/usr/bin/env bash
# servers/stop.sh PIDFILE... - stop servers started by start.sh: SIGTERM, up to 10 s, then SIGKILL.
# Only the PID in each file is signalled; the file is removed.
set -u
rc=0
for f in "$@"; do
  [ -f "$f" ] || { echo "stop.sh: no pid file $f" >&2; continue; }
  pid="$(cat "$f")"
  case "$pid" in ''|*[!0-9]*) echo "stop.sh: bad pid in $f" >&2; rc=1; continue ;; esac
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; echo "stop.sh: killed $pid (-9)" >&2; }
  fi
  rm -f "$f"
done
exit $rc
