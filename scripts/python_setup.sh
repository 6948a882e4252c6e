#!/usr/bin/env bash
# Makes `import zrollout` work for Debian's /usr/bin/python3 from this checkout: writes
# zrollout.pth (one line: <checkout>/python) into that interpreter's site-packages folder
# (/usr/local/lib/python3.X/dist-packages as root, else the user's site folder; $ZR_PYTHON_SITE
# overrides). The package's C++ extension, python/zrollout/_native*.so, must be built already
# (scripts/build.sh). Why a .pth and not pip: no network, no build step of its own, and a rebuild
# of the extension is seen at once; `pip install --no-build-isolation --no-deps -e python/` works
# too (python/pyproject.toml).
# Only one checkout per interpreter can be the `zrollout` found this way; PYTHONPATH still wins
# (the tests set it to their own checkout).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ZR_PYTHON:-/usr/bin/python3}"

if [[ ! -x "$PY" ]]; then
  echo "python_setup.sh: $PY not found; the Python package is not set up" >&2
  exit 1
fi
if ! compgen -G "$ROOT/python/zrollout/_native*.so" >/dev/null; then
  echo "python_setup.sh: $ROOT/python/zrollout/_native*.so is missing: run scripts/build.sh first" >&2
  exit 1
fi
site="${ZR_PYTHON_SITE:-}"
if [[ -z "$site" ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    site=$("$PY" -c 'import sys; print(f"/usr/local/lib/python{sys.version_info.major}.{sys.version_info.minor}/dist-packages")')
  else
    site=$("$PY" -m site --user-site)
  fi
fi
mkdir -p "$site"
echo "$ROOT/python" > "$site/zrollout.pth"
# A fresh interpreter reads the .pth only from its own site folders: check with one of those.
if [[ -z "${ZR_PYTHON_SITE:-}" ]]; then
  "$PY" -c 'import zrollout.weights, zrollout._native as n; print("python_setup.sh: import zrollout works:", n.__file__)'
else
  "$PY" -c "import site; site.addsitedir('$site'); import zrollout.weights, zrollout._native as n; print('python_setup.sh: import zrollout works:', n.__file__)"
fi
