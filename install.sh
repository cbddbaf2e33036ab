#!/usr/bin/env bash
# Install the orchestra tools into ./.venv and put `runaway` on the PATH.
# Works on a fresh Debian 12 as root (installs python3-venv when missing) and on any machine
# with Python >= 3.10. Usage: bash install.sh [EXTRAS]   e.g. bash install.sh test,bench
set -euo pipefail
cd "$(dirname "$0")"
extras=${1:-}
python=${PYTHON:-python3}

if ! command -v "$python" >/dev/null || ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install: installing python3 and python3-venv with apt-get"
    [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock)" ] || apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    python=python3
  else
    echo "install: need Python >= 3.10 with the venv module (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "install: Python >= 3.10 needed, found $("$python" --version)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"

bin=/usr/local/bin
[ "$(id -u)" = 0 ] || bin="$HOME/.local/bin"
mkdir -p "$bin"
ln -sf "$PWD/.venv/bin/runaway" "$bin/runaway"
echo "install: runaway installed ($bin/runaway -> $PWD/.venv/bin/runaway)"
