#!/usr/bin/env bash
# Installs everything sbx needs on a Debian 12 host, idempotently:
# apt packages (runsc from Debian 13 through a low-priority source derived from
# this machine's own apt source), and a Python virtual environment in .venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SBX_VENV:-$here/.venv}"
log() { printf '[sbx-install] %s\n' "$*" >&2; }

need_apt=()
for pair in nft:nftables ip:iproute2 mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs \
            unshare:util-linux nsenter:util-linux sqlite3:sqlite3 curl:curl \
            systemd-analyze:systemd node:nodejs; do
  cmd="${pair%%:*}"; pkg="${pair#*:}"
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# The test suite runs the store on a PostgreSQL of its own (initdb, pg_ctl).
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)

# runsc must come from Debian 13: the Debian 12 build cannot run netstack here.
runsc_ok() { command -v runsc >/dev/null 2>&1 && runsc --version 2>/dev/null | head -1 | grep -Eq '20(2[4-9]|[3-9][0-9])[0-9]{4}'; }
# The deployment test renders deploy/kubernetes with `kubectl kustomize`:
# Debian 12's kubectl (1.20, kustomize 2) is too old for it, so it comes
# from Debian 13 too (kubernetes-client, there a transitional package that
# brings kubectl; it also replaces Debian 12's kubernetes-client cleanly).
# Any kubectl with kustomize 4 or later will do.
kubectl_ok() { command -v kubectl >/dev/null 2>&1 && kubectl version --client 2>/dev/null | grep -Eq '^Kustomize Version: v([4-9]|[1-9][0-9])\.'; }

add_trixie_source() {
  local src=/etc/apt/sources.list.d/sbx-trixie.sources
  [ -f "$src" ] && return 0
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # The first URI of the stanza that carries the release suite (not -security).
    uri="$(awk '/^URIs:/{u=$2} /^Suites:/{ if ($0 ~ /bookworm( |$)/ ) {print u; exit} }' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list)"
  fi
  [ -n "$uri" ] || { log "cannot derive a Debian mirror from this machine's apt sources"; exit 1; }
  log "adding Debian 13 source (pinned low) derived from $uri"
  cat >"$src" <<SRC
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  cat >/etc/apt/preferences.d/sbx-trixie <<PIN
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
}

if ! runsc_ok || ! kubectl_ok || [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! runsc_ok || ! kubectl_ok; then add_trixie_source; fi
  log "apt-get update"
  apt-get update -qq
  if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  fi
  if ! runsc_ok; then
    log "installing runsc from Debian 13"
    apt-get install -y -qq -t trixie runsc >/dev/null
  fi
  if ! kubectl_ok; then
    log "installing kubectl (kubernetes-client) from Debian 13"
    apt-get install -y -qq -t trixie kubernetes-client >/dev/null
  fi
fi
# Debian's nodejs comes without npm (another source's may bring its own):
# the JavaScript SDK tests install their packages with it.
if ! command -v npm >/dev/null 2>&1; then
  log "installing npm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  /usr/bin/python3 -m venv "$venv"
fi
stamp="$venv/.sbx-installed"
constraints="$here/constraints.txt"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] || [ "$constraints" -nt "$stamp" ]; then
  # Pinned versions (constraints.txt, scripts/lock.sh): a fresh clone
  # installs what the tests last passed with.
  log "installing Python packages"
  "$venv/bin/pip" install -q -c "$constraints" --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -c "$constraints" -e "$here[dev]"
  touch "$stamp"
fi
log "ready"
