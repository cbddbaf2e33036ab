#!/usr/bin/env bash
# Install the orchestra tools into ./.venv and put every console script of the distribution
# (runaway, and each tool as it lands) on the PATH.
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
# The package is installed in place (editable): its bytecode is made now, once, as pip makes
# it for wheels. Where PYTHONDONTWRITEBYTECODE is set (containers often set it) every command
# would compile its sources again: 0.1 s of each command's start on the test machine.
.venv/bin/python -m compileall -q -j 0 liborchestra runaway parasearch expegit orchestra >/dev/null

bin=/usr/local/bin
[ "$(id -u)" = 0 ] || bin="$HOME/.local/bin"
mkdir -p "$bin"
# every console script the distribution declares (pyproject.toml [project.scripts])
scripts=$(.venv/bin/python -c '
from importlib.metadata import distribution
print(" ".join(sorted(e.name for e in distribution("orchestra-tools").entry_points
                      if e.group == "console_scripts")))')
# the tools of the distribution: runaway, parasearch, expegit, orchestra (all must be there)
for name in runaway parasearch expegit orchestra; do
  case " $scripts " in *" $name "*) ;; *) echo "install: $name is not declared" >&2; exit 1;; esac
done
for name in $scripts; do
  ln -sf "$PWD/.venv/bin/$name" "$bin/$name"
  "$bin/$name" --version >/dev/null || { echo "install: $name --version failed" >&2; exit 1; }
done
echo "install: $scripts installed in $bin (-> $PWD/.venv/bin)"
