#!/usr/bin/env bash
# The device check: on a machine with one NVIDIA GPU and PyTorch (installs nothing), runs the
# GPU tests, the gpu suite's seeds and a short tuner pass, and prints a table.
#   scripts/gpu_check.sh [--budget-s 420] [--configs 4] [--tasks a,b] [--skip-tests] [--out DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 scripts/gpu_check.py "$@"
