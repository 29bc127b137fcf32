#!/usr/bin/env bash
# Regenerate the reference fixtures under tests/reference/data/.
# Usage (from anywhere): bash tests/reference/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."          # repo root

VENV=target/reference-venv
REQ=tests/reference/requirements.txt
STAMP="$VENV/.requirements.txt"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# (Re)install when the venv is new or requirements.txt changed since last install.
if ! cmp -s "$REQ" "$STAMP"; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
    cp "$REQ" "$STAMP"
fi

# Fixed thread count keeps BLAS reduction order (and hence the last rounded
# digit of every logit) stable between runs; PYTHONHASHSEED for good measure.
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PYTHONHASHSEED=0

exec "$VENV/bin/python" tests/reference/make_reference.py \
    --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
    --out tests/reference/data "$@"
