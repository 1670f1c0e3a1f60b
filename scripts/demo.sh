#!/usr/bin/env bash
# demo.sh - install mountd and mount the demo repository (examples/demo.toml) in the foreground.
# The remote is the local directory /var/tmp/mountd-demo/bucket: no server is needed.
# Stop with Ctrl-C (pending uploads drain first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
MP="${1:-/mnt/mountd-demo}"
mkdir -p "$MP" /var/tmp/mountd-demo/bucket
echo "mounting the demo repository at $MP (files under $MP/data go to /var/tmp/mountd-demo/bucket)" >&2
exec .venv/bin/mountd mount examples/demo.toml "$MP" --foreground
