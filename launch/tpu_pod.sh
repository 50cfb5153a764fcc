#!/usr/bin/env bash
# Run an evejax job on every host of a Cloud TPU VM slice: one program, all workers.
#   launch/tpu_pod.sh [--dry_run] TPU_NAME ZONE configs/eve.py:qwen2_5_vl_7b /mnt/shared/eve_7b \
#       --config.init.hf_dir=/mnt/shared/Qwen2.5-VL-7B-Instruct
# Ships this checkout (git archive of HEAD) to every worker, installs it with jax[tpu], and
# starts `python -m evejax.main --distributed` on all of them at once; jax reads the
# coordinator, process count and index from the TPU metadata. The workdir and the
# checkpoint directory must be one path every worker sees (an NFS/Filestore or gcsfuse
# mount): all workers write checkpoint shards there, worker 0 metrics and galleries.
# --dry_run prints the commands instead of running them. TPU_PROJECT sets --project.
set -euo pipefail
dry_run=0
if [[ ${1:-} == --dry_run ]]; then dry_run=1; shift; fi
if [[ $# -lt 4 ]]; then
  echo "usage: launch/tpu_pod.sh [--dry_run] TPU_NAME ZONE CONFIG WORKDIR [--config.overrides...]" >&2
  exit 2
fi
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
cd "$(dirname "$0")/.."
project=()
if [[ -n ${TPU_PROJECT:-} ]]; then project=(--project "$TPU_PROJECT"); fi

# The command every worker runs, quoted once for the remote shell.
train=$(printf '%q ' python -m evejax.main --distributed --config "$config" --workdir "$workdir" "$@")
train=${train% }
remote="set -e; rm -rf evejax && mkdir evejax && tar xzf evejax.tar.gz -C evejax && cd evejax \
&& pip install -q -e . 'jax[tpu]' && $train"

run() {
  if [[ $dry_run == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
run git archive --format=tar.gz -o /tmp/evejax.tar.gz HEAD
run gcloud compute tpus tpu-vm scp /tmp/evejax.tar.gz "$tpu:~/evejax.tar.gz" --zone "$zone" \
    "${project[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" "${project[@]}" --worker=all \
    --command "$remote"
