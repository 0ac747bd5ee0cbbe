#!/usr/bin/env bash
# The whole test suite: lint, types, unit, integration (real runsc,
# nftables; the store on SQLite, and on a PostgreSQL the tests start) and
# e2b-SDK compatibility. Assumes scripts/install.sh ran.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="$here/.venv/bin"
fail=0
echo "== ruff"; "$venv/ruff" check sbx tests bench || fail=1
echo "== mypy"; "$venv/mypy" || fail=1
echo "== pytest"
"$venv/pytest" "$@"
code=$?
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  code=1
fi
[ "$code" -ne 0 ] && fail=1
exit "$fail"
