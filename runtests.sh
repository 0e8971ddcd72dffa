#!/usr/bin/env bash
# The project's one test command (README and CI both call it).
# Creates ./.venv if missing, installs the package with pinned torch, then runs the CPU test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt -e ".[test,label]"
# MONAI Label without its declared requirements (they pull torchvision, sam2 and a CUDA torch); `.[label]` has what
# its server imports. Same two commands as docs/slicer_and_monailabel.md.
python -m pip install -q -c constraints.txt --no-deps monailabel pydicom-seg
# Keep each test process to the cores it was given; tiny nets are slower with oversubscription.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest -q "$@"
