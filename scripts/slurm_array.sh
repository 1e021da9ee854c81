#!/usr/bin/env bash
# Cluster recipe (an example to adapt): the 15 MVTec AD categories as a Slurm job array, one category per job and
# GPU, each through the same sweep as bash scripts/run_all_mvtec.sh, then one gathering job for the table.
#
#   $ sbatch scripts/slurm_array.sh --data_root=data/mvtec --out_dir=runs                      # 15 jobs
#   $ sbatch --dependency=afterany:<array job id> --wrap \
#       "python scripts/sweep.py --table_only=1 --data_root=data/mvtec --out_dir=runs"         # runs/results.md
#
# Give the gathering command the same --name=value as the array: the table shows results trained with those
# settings. Each job also rebuilds runs/results.md with whatever has finished so far. Two minutes before its time
# limit a job's sweep gets SIGTERM (--signal=B:..., B: the batch shell, which exec makes the sweep itself) and passes
# it on: train.py saves a checkpoint and stops. Resubmitting the same array resumes those and skips finished ones.
# Submit from the repository root, in the Python environment of the project.
#SBATCH --job-name=rd-mvtec
#SBATCH --array=0-14
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=06:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail

# the MVTec AD category of this job, in utils/known_datasets.py's order (textures, then objects)
category=$(python -c "import known_datasets; print(known_datasets.MVTEC_AD.categories[$SLURM_ARRAY_TASK_ID])")
exec python scripts/sweep.py --categories="$category" "$@"
