#!/usr/bin/env bash
# Run an evejax job on this machine: one process (CPU or the local GPUs), or several
# processes that form one multi-process run, as the hosts of a pod would.
#   launch/local.sh configs/eve.py:tiny workdirs/eve_tiny [--config.eve.iterations=1 ...]
#   launch/local.sh --processes 2 --cpu_devices 4 configs/eve.py:tiny workdirs/eve_2x4
# Options, before the config:
#   --processes N    N processes joined by --distributed (coordinator 127.0.0.1:PORT)
#   --cpu_devices D  CPU JAX with D devices per process (what the tests use); with several
#                    processes each is pinned to one core (taskset): XLA's CPU runtime
#                    (jax 0.10) starts a program's independent collectives in whatever order
#                    its thread pool frees up, which can differ between processes and then
#                    mismatches gloo's messages; one core gives the pool one thread
#   --port P         the coordinator's port (default: a free one)
#   --dry_run        print each process's command and exit
# Process 0 writes to this terminal; process i > 0 to WORKDIR/launch.p<i>.log. When one
# process fails the others are stopped, and the script exits with its status.
set -euo pipefail
processes=1 cpu_devices="" port="" dry_run=0
while [[ $# -gt 0 && $1 == --* && $1 != --config* ]]; do
  case $1 in
    --processes) processes=$2; shift 2 ;;
    --cpu_devices) cpu_devices=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dry_run) dry_run=1; shift ;;
    *) echo "launch/local.sh: unknown option $1 (--processes, --cpu_devices, --port, --dry_run)" >&2
       exit 2 ;;
  esac
done
config=${1:-configs/eve.py:tiny}
workdir=${2:-workdirs/$(basename "${config%%:*}" .py)_${config##*:}}
shift $(( $# > 2 ? 2 : $# ))
python=${PYTHON:-python}

env_args=()
if [[ -n $cpu_devices ]]; then
  flags=""
  for f in ${XLA_FLAGS:-}; do
    [[ $f == --xla_force_host_platform_device_count* ]] || flags+="$f "
  done
  env_args=(JAX_PLATFORMS=cpu "XLA_FLAGS=${flags}--xla_force_host_platform_device_count=$cpu_devices")
fi
cores=()   # the cores this launcher may use (its affinity), for pinning
if [[ $processes -gt 1 && -n $cpu_devices ]] && command -v taskset > /dev/null; then
  read -r -a cores <<< "$("$python" -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
fi
command_of() {  # the command of process $1, then the overrides
  local id=$1; shift
  local cmd=(env "${env_args[@]}")
  if [[ ${#cores[@]} -gt 0 ]]; then
    cmd+=(taskset -c "${cores[id % ${#cores[@]}]}")
  fi
  cmd+=("$python" -m evejax.main)
  if [[ $processes -gt 1 ]]; then
    cmd+=(--distributed "--coordinator_address=127.0.0.1:$port" "--num_processes=$processes"
          "--process_id=$id")
  fi
  cmd+=(--config "$config" --workdir "$workdir" "$@")
  printf '%q ' "${cmd[@]}"
}

if [[ $processes -le 1 ]]; then
  if [[ $dry_run == 1 ]]; then echo "process 0: $(command_of 0 "$@")"; exit 0; fi
  eval "exec $(command_of 0 "$@")"
fi
if [[ -z $port ]]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
if [[ $dry_run == 1 ]]; then
  for ((i = 0; i < processes; i++)); do echo "process $i: $(command_of "$i" "$@")"; done
  exit 0
fi

mkdir -p "$workdir"
pids=()
stop_all() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap 'stop_all; exit 130' INT TERM
for ((i = 0; i < processes; i++)); do
  # exec: the pid we keep (and stop) is the process itself, not a subshell.
  if [[ $i == 0 ]]; then
    eval "exec $(command_of 0 "$@")" &
  else
    eval "exec $(command_of "$i" "$@")" > "$workdir/launch.p$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
while [[ ${#pids[@]} -gt 0 ]]; do
  code=0 done_pid=""
  wait -n -p done_pid "${pids[@]}" || code=$?
  [[ -n $done_pid ]] || break   # none of them is left to wait for
  left=()
  for pid in "${pids[@]}"; do
    if [[ $pid != "$done_pid" ]]; then left+=("$pid"); fi
  done
  pids=("${left[@]}")
  if [[ $code != 0 ]]; then
    echo "launch/local.sh: a process exited with status $code; stopping the others" >&2
    status=$code
    stop_all
    wait "${pids[@]}" 2>/dev/null || true
    break
  fi
done
exit $status
