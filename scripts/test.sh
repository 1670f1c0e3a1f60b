#!/usr/bin/env bash
# test.sh [PYTEST ARGS] - install mountd with its test tools, lint, and run the whole test suite.
#   quick set while working: bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/ruff check mountd tests bench
.venv/bin/mypy
# two workers, each given whole files (their module fixtures, a server's bucket, stay in one
# process); MOUNTD_TEST_WORKERS=0 runs everything in this process
exec .venv/bin/python -m pytest -ra -n "${MOUNTD_TEST_WORKERS:-2}" --dist loadfile "$@"
