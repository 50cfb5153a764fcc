#!/usr/bin/env bash
# Run an evejax job on every host of a Cloud TPU VM slice (one program, all hosts).
#   launch/tpu_pod.sh TPU_NAME ZONE configs/eve.py:qwen2_5_vl_7b gs://bucket/eve_7b \
#       --config.init.hf_dir=/mnt/ckpt/Qwen2.5-VL-7B-Instruct
# Ships this checkout (git archive of HEAD) to every host. The checkpoint directory must
# exist on every host (e.g. a gcsfuse mount); a GCS workdir lets all hosts share checkpoints.
set -euo pipefail
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
cd "$(dirname "$0")/.."
git archive --format=tar.gz -o /tmp/evejax.tar.gz HEAD
gcloud compute tpus tpu-vm scp /tmp/evejax.tar.gz "$tpu":~/evejax.tar.gz --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  rm -rf evejax && mkdir evejax && tar xzf evejax.tar.gz -C evejax && cd evejax
  pip install -q -e . 'jax[tpu]'
  python -m evejax.main --distributed --config $config --workdir $workdir $*
"
