#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs moba_jax with its pinned, verified stack
# (jax 0.11.2; see setup.py) plus the test extras. Usage: bash install.sh
#
# The interpreter is the first of: $PYTHON (if set), a working `python3.12` on PATH,
# pyenv's newest installed 3.12.x. Re-running reuses .venv and reinstalls the pins.
set -euo pipefail
cd "$(dirname "$0")"

works() { "$@" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; }

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    works "$PYTHON" && { echo "$PYTHON"; return; }
    echo "install.sh: PYTHON=$PYTHON is not a working Python 3.12" >&2; exit 1
  fi
  if command -v python3.12 >/dev/null 2>&1 && works python3.12; then
    command -v python3.12; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    local root candidate
    root=$(pyenv root)
    for candidate in $(ls -d "$root"/versions/3.12.* 2>/dev/null | sort -V -r); do
      works "$candidate/bin/python3.12" && { echo "$candidate/bin/python3.12"; return; }
    done
  fi
  echo "install.sh: no Python 3.12 found. Install one (python.org, your package manager," \
       "or 'pyenv install 3.12'), or point PYTHON=/path/to/python3.12 at it." >&2
  exit 1
}

if [ ! -x .venv/bin/python ] || ! works .venv/bin/python; then
  py=$(find_python)
  echo "install.sh: creating .venv with $py ($("$py" --version))"
  rm -rf .venv
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
echo "install.sh: done; run things with .venv/bin/python (or 'source .venv/bin/activate')"
