#!/usr/bin/env bash
# Runs the Deno binary that npm installed for this platform. The `deno` npm shim is avoided on
# purpose: after Deno re-lays node_modules it can panic, while the platform binary always works.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for bin in "$root"/node_modules/@deno/*/deno; do
  if [ -x "$bin" ]; then exec "$bin" "$@"; fi
done
echo "perfit: Deno is not installed; run 'npm ci' first" >&2
exit 127
