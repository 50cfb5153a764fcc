#!/usr/bin/env bash
# Run an evejax job on one or many Slurm GPU nodes: one process per node drives its GPUs.
#   sbatch launch/gpu_slurm.sh configs/eve.py:qwen2_5_vl_7b /shared/eve_7b \
#       --config.init.hf_dir=/shared/Qwen2.5-VL-7B-Instruct
#   sbatch --nodes=4 launch/gpu_slurm.sh ...        # four nodes, one program
#   launch/gpu_slurm.sh --dry_run CONFIG WORKDIR ...  # print the srun command
# Several nodes join through --distributed, everything else from the Slurm environment.
# The workdir and the checkpoint directory must be on a filesystem every node mounts.
#SBATCH --job-name=evejax
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=evejax-%j.out
set -euo pipefail
dry_run=0
if [[ ${1:-} == --dry_run ]]; then dry_run=1; shift; fi
if [[ $# -lt 2 ]]; then
  echo "usage: [sbatch] launch/gpu_slurm.sh [--dry_run] CONFIG WORKDIR [--config.overrides...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# Let XLA overlap collectives with compute on NVLink nodes.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"

nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
cmd=(srun --nodes="$nodes" --ntasks-per-node=1 python -m evejax.main)
# Several nodes: jax reads the coordinator (the step's first node), the process
# count and each task's index (SLURM_PROCID) from the environment srun sets.
if [[ $nodes -gt 1 ]]; then cmd+=(--distributed); fi
cmd+=(--config "$config" --workdir "$workdir" "$@")
if [[ $dry_run == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
