#!/usr/bin/env bash
# Run an evejax job on this machine (CPU or local GPUs).
#   launch/local.sh configs/eve.py:tiny workdirs/eve_tiny [--config.eve.iterations=1 ...]
set -euo pipefail
config=${1:-configs/eve.py:tiny}
workdir=${2:-workdirs/$(basename "${config%%:*}" .py)_${config##*:}}
shift $(( $# > 2 ? 2 : $# ))
exec python -m evejax.main --config "$config" --workdir "$workdir" "$@"
