#!/usr/bin/env bash
# The main job on an embedded default: PIE progression of the shipped example T1 (a held-out synthetic CN subject)
# toward AD with the shipped brain LDM weights, offline, on CPU. Creates ./.venv if missing (same install as the tests).
# Extra arguments are passed to the bundle, e.g.:  bash demo.sh --num_rounds 4 --target_diagnosis MCI
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt -e .
OUT="${OUT:-outputs/brain_progression_demo}"
python -m monai.bundle run --config_file bundles/brain_mri_progression/configs/inference.json \
    --bundle_root bundles/brain_mri_progression --output_dir "$OUT" "$@"
echo
echo "Done. Look at:"
echo "  $OUT/progression_strip.png   mid-slices per round, with the change in blue (darker) / red (brighter)"
echo "  $OUT/progression.gif         the frames as an animation"
echo "  $OUT/frame_*.nii.gz          the frames on the input's grid (open in 3D Slicer), change_*.nii.gz the differences"
echo "  $OUT/progression.json        parameters and per-round statistics"
