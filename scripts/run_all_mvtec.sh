#!/usr/bin/env bash
# Train and test Reverse Distillation on every MVTec AD category, then write <out_dir>/results.md.
#
#   $ bash scripts/run_all_mvtec.sh                                   # the 15 categories under data/mvtec, all GPUs
#   $ bash scripts/run_all_mvtec.sh --categories=bottle,screw --gpus=0,1 --epochs=50
#   $ bash scripts/run_all_mvtec.sh --data_root=data/demo --categories=stripes,disc --backbone=resnet18 --weights=none
#
# Sweep settings: --categories=a,b  --gpus=0,1  --force=1 (retrain finished ones)  --table_only=1 (only rebuild the
# table). Every other --name=value goes to train.py and/or test.py, whichever has that setting. Rerunning the same
# command skips finished categories and resumes interrupted ones. All the logic is in scripts/sweep.py.
# Relative paths are taken from the current directory. PYTHON=/path/to/python picks the interpreter.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/sweep.py" "$@"
