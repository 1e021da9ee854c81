#!/usr/bin/env bash
# The README's first command: make the synthetic demo data (not MVTec AD) and run the whole sweep on it,
# train + test of three categories on the CPU in a few minutes, then print the tables.
# The teacher is a *randomly initialised* resnet18 (--weights=none), so this runs offline anywhere.
#   $ bash scripts/demo.sh                  # extra --name=value settings are passed on to the sweep
#   $ bash scripts/demo.sh --method=rd++    # RD++ instead of RD, into runs/demo_rdpp
#   $ bash scripts/demo.sh --unified=1      # ONE model of the three categories, into runs/demo/disc+grid_gray+stripes
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=runs/demo
for arg in "$@"; do
    if [ "$arg" = "--method=rd++" ]; then out_dir=runs/demo_rdpp; fi  # an RD++ sweep must not resume RD's checkpoints
done
python scripts/make_demo_data.py --out=data/demo
bash scripts/run_all_mvtec.sh --data_root=data/demo --categories=stripes,disc,grid_gray --out_dir=$out_dir \
    --backbone=resnet18 --weights=none --image_size=128 --batch_size=8 --epochs=20 "$@"
