#!/usr/bin/env bash
# Submit an evejax job to a Slurm GPU node (one process drives all local GPUs).
#   sbatch launch/gpu_slurm.sh configs/eve.py:qwen2_5_vl_7b /scratch/eve_7b \
#       --config.init.hf_dir=/models/Qwen2.5-VL-7B-Instruct
#SBATCH --job-name=evejax
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=evejax-%j.out
set -euo pipefail
config=$1; workdir=$2; shift 2
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# Let XLA overlap collectives with compute on NVLink nodes.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
srun python -m evejax.main --config "$config" --workdir "$workdir" "$@"
