#!/usr/bin/env bash
# The GPU check in one command (docs/benchmarks.md): install the service's wheels from
# ./wheelhouse (`make wheels`) into a venv that sees the image's torch, then run
# bench/gpu_check.py. Results: $OUT/gpu-check.json and $OUT/gpu-check.md (OUT defaults to
# ./gpu-check-out). GPU_CHECK_TINY=1 runs every step at toy size on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-gpu-check-out}"
export OUT
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
SERVICE_MODULES="fastapi, uvicorn, celery, kombu, sqlalchemy, alembic, pydantic_settings, ptflops"

if ! "$PYTHON" -c "import torch, $SERVICE_MODULES" 2>/dev/null; then
    VENV="${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/gpu-check-venv}"
    echo "installing the service's wheels from wheelhouse/ into $VENV"
    "$PYTHON" -m venv --system-site-packages "$VENV" || exit 1
    "$VENV/bin/python" -m pip install -q --no-index --find-links wheelhouse \
        -r bench/gpu-check-requirements.txt ptflops 2>&1 | tee "$OUT/pip-install.log"
    PYTHON="$VENV/bin/python"
    "$PYTHON" -c "import torch, $SERVICE_MODULES" || {
        echo "the service's dependencies are still missing; see $OUT/pip-install.log" >&2
        exit 1
    }
fi

"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
tiny=()
if [ -n "${GPU_CHECK_TINY:-}" ]; then tiny=(--tiny); fi
exec "$PYTHON" -m bench.gpu_check "${tiny[@]}" --out "$OUT"
