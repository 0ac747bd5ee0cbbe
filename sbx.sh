#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (as root):
#   ./sbx.sh server [sbx server options]   install what is missing, then run the server
#   ./sbx.sh test   [pytest options]       install what is missing, then run every test
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cmd="${1:-}"; shift || true
case "$cmd" in
  server)
    bash "$here/scripts/install.sh"
    exec "$here/.venv/bin/sbx" server "$@"
    ;;
  test)
    bash "$here/scripts/install.sh"
    exec bash "$here/scripts/test.sh" "$@"
    ;;
  *)
    echo "usage: $0 server|test [options]" >&2
    exit 2
    ;;
esac
