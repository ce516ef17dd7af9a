#!/usr/bin/env bash
# Idempotently create the peer-library virtual environments used by the
# benchmark harness.  Safe to re-run: an existing, working venv is left alone.
#
#   venv-seal     : system python3 (3.11) + tenseal (bundles Microsoft SEAL 4.x, exposes tenseal.sealapi)
#   venv-openfhe  : pyenv CPython 3.10.13 + openfhe (the wheel's extension is built for CPython 3.10 only)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SEAL_VENV="${SEAL_VENV:-$ROOT/venv-seal}"
OPENFHE_VENV="${OPENFHE_VENV:-$ROOT/venv-openfhe}"
PY310="${PY310:-$HOME/.pyenv/versions/3.10.13/bin/python}"

if [ -x "$SEAL_VENV/bin/python" ] && "$SEAL_VENV/bin/python" -c 'import tenseal.sealapi' 2>/dev/null; then
    echo "[setup] $SEAL_VENV present (tenseal importable), skipping"
else
    echo "[setup] creating $SEAL_VENV"
    python3 -m venv "$SEAL_VENV"
    "$SEAL_VENV/bin/pip" install --quiet --upgrade pip
    "$SEAL_VENV/bin/pip" install --quiet tenseal
fi

if [ -x "$OPENFHE_VENV/bin/python" ] && "$OPENFHE_VENV/bin/python" -c 'import openfhe' 2>/dev/null; then
    echo "[setup] $OPENFHE_VENV present (openfhe importable), skipping"
else
    if [ ! -x "$PY310" ]; then
        echo "[setup] ERROR: need CPython 3.10 at $PY310 (set PY310=...)" >&2
        exit 1
    fi
    echo "[setup] creating $OPENFHE_VENV"
    "$PY310" -m venv "$OPENFHE_VENV"
    "$OPENFHE_VENV/bin/pip" install --quiet --upgrade pip
    "$OPENFHE_VENV/bin/pip" install --quiet openfhe
fi

"$SEAL_VENV/bin/python" -c 'import tenseal; print("[setup] tenseal", tenseal.__version__)'
"$OPENFHE_VENV/bin/python" -c 'import openfhe, importlib.metadata as m; print("[setup] openfhe", m.version("openfhe"))'
