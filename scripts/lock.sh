#!/usr/bin/env bash
# Regenerates constraints.txt: resolves pyproject.toml's dependencies (with
# the dev extra) afresh in a scratch virtual environment and writes down
# every version it got. Run after changing a dependency, then run the tests.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
/usr/bin/python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q --upgrade pip
"$scratch/venv/bin/pip" install -q "$here[dev]"
{
  echo "# The Python packages sbx was last tested with: scripts/install.sh installs"
  echo "# with \`pip install -c constraints.txt\`, so a fresh clone gets these versions."
  echo "# Regenerate after changing pyproject.toml's dependencies: scripts/lock.sh."
  echo "pip==$("$scratch/venv/bin/pip" --version | awk '{print $2}')"
  "$scratch/venv/bin/pip" freeze --exclude sbx | grep -v '^#'
} >"$here/constraints.txt"
echo "wrote $here/constraints.txt"
