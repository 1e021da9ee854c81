#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run of a few minutes: the GPU tests (tests/test_gpu.py: bf16 autocast,
# compile, the image store feeding the GPU, torchrun with NCCL, export of a GPU-trained model), then two timings on
# the GPU: one demo category (train + test of disc, the demo's settings) and one wide_resnet50_2 epoch at 256x256
# (200 generated images, batch 16, random teacher weights, so it runs offline), fp32 and bf16. Needs the packages of
# requirements.txt (and requirements-deploy.txt for the export test). docs/speed.md keeps the figures.
#   $ bash scripts/gpu_check.sh                     # work files and log under runs/gpu_check
#   $ OUT_DIR=/tmp/gpu bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT_DIR:-runs/gpu_check}
python=${PYTHON:-python3}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== tests/test_gpu.py"
"$python" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py

seconds() { local t0=$SECONDS; "$@" > "$out/last.log" 2>&1 || { cat "$out/last.log"; return 1; }; echo $((SECONDS - t0)); }

echo "== one demo category (disc: resnet18 random teacher, 128x128, batch 8, 20 epochs)"
"$python" scripts/make_demo_data.py --out="$out/demo" --categories=disc > /dev/null
train_s=$(seconds "$python" train.py --data_root="$out/demo" --category=disc --out_dir="$out/demo_runs" --backbone=resnet18 \
    --weights=none --image_size=128 --batch_size=8 --epochs=20 --device=cuda --overwrite=1)
test_s=$(seconds "$python" test.py --checkpoint="$out/demo_runs/disc/checkpoint.pth" --device=cuda)
grep -m1 "^disc (rd)" "$out/last.log"
echo "demo disc on the GPU: train ${train_s} s, test ${test_s} s (whole processes)"

echo "== one wide_resnet50_2 epoch (256x256, 200 images, batch 16, random teacher weights)"
"$python" scripts/make_demo_data.py --out="$out/wide" --categories=stripes --size=256 --n_train=200 --n_test_good=1 --n_test_defect=1 > /dev/null
for amp in 0 1; do
    "$python" train.py --data_root="$out/wide" --category=stripes --out_dir="$out/wide_runs_amp$amp" --backbone=wide_resnet50_2 \
        --weights=none --image_size=256 --batch_size=16 --epochs=2 --device=cuda --amp=$amp --overwrite=1 > "$out/last.log" 2>&1 \
        || { cat "$out/last.log"; exit 1; }
    # the second epoch: the first pays cuDNN's autotuning and the teacher cache
    echo "amp=$amp: $(grep '^epoch 2/2' "$out/last.log")"
done
echo "log: $out/gpu_check.log"
