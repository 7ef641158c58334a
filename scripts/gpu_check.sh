#!/usr/bin/env bash
# The device check: on a machine with one NVIDIA GPU and PyTorch (installs nothing), runs the
# GPU tests, the gpu suite's seeds and a short tuner pass, and prints a table; then the gpu
# suite's attention kernels exported and applied to a bf16 transformer (scripts/gpu_e2e.py:
# parity and end-to-end speedup, eager and compiled; GPU_E2E=0 skips it); then import and audit of
# a CUDA-L1-format release of load_inline CUDA candidates (scripts/gpu_import.py; GPU_IMPORT=0 skips it).
#   scripts/gpu_check.sh [--budget-s 420] [--configs 4] [--tasks a,b] [--skip-tests] [--out DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 scripts/gpu_check.py "$@"
status=$?
if [ "${GPU_E2E:-1}" != 0 ]; then
    python3 scripts/gpu_e2e.py || status=$?
fi
if [ "${GPU_IMPORT:-1}" != 0 ]; then
    python3 scripts/gpu_import.py || status=$?
fi
exit $status
