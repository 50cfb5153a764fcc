"""Several processes, one program: initialisation, shares, gathers, process-local rows.

A multi-host run (a TPU pod slice, Slurm GPU nodes, or several CPU processes on
one machine) is one program run by every process, each with its own CPUs and
its own slice of the devices. The mesh spans every process's devices; what
each process does on the host follows one rule:

  host work is split, decisions are gathered
    every process owns a share of each step's work items (`share`: a
    contiguous block, in process order): it reads only those source images,
    runs only those programs in its own sandbox, computes those rows' rewards,
    and contributes those rows to global, device-sharded batches. Whatever
    must be the same everywhere (a queue, a data selection, advantages, a
    batch-wide penalty, metrics) is decided by every process from the same
    gathered data (`allgather`, `gather_rows`) with the same code, so it is
    identical without being sent around.

  rows travel as process-local blocks
    a batch axis is split over the devices so that each process holds one
    contiguous block of rows (`check_batch_layout`); `put_local` builds global
    arrays from each process's block (`jax.make_array_from_process_local_data`)
    and `local_rows` reads a process's block back. Blocks of a batch have the
    same shape on every process (shapes are agreed first, from gathered
    sizes), so the compiled programs are the same everywhere.

With one process every function here is the identity or plain `device_put`:
the single-process path runs exactly the code it always ran.

Initialisation (`initialize`): on Cloud TPU and under Slurm everything comes
from the environment (jax's cluster detection); elsewhere the coordinator
address, process count and process id are given (flags of `evejax.main`).
CPU processes exchange collectives through gloo.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging

# Gathered byte strings are padded to a power of two (at least this), so the
# gather compiles for a handful of sizes per run, not one per message.
_MIN_GATHER_BYTES = 256


# -- initialisation -----------------------------------------------------------


class DistributedSetupError(ValueError):
  """Flags or environment that cannot start a multi-process run."""


def _platforms() -> str:
  return (os.environ.get("JAX_PLATFORMS") or str(jax.config.jax_platforms or "")).lower()


def _slurm_one_task_per_node() -> bool:
  tasks = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_NTASKS_PER_NODE")
  return "SLURM_JOB_ID" in os.environ and tasks is not None and tasks.split("(")[0] == "1"


def _visible_gpus() -> list[int] | None:
  """Indices of this node's GPUs, from the environment Slurm sets (None: unknown)."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible:
    return list(range(len([v for v in visible.split(",") if v.strip()])))
  count = os.environ.get("SLURM_GPUS_ON_NODE")
  return list(range(int(count))) if count and count.isdigit() else None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None) -> None:
  """Joins this process to a multi-process run (before any other JAX call).

  Cloud TPU VMs and Slurm jobs: leave every argument None; jax reads the TPU
  metadata or SLURM_* variables (the coordinator is the job's first node).
  Anywhere else give `coordinator_address` (host:port of process 0),
  `num_processes` and `process_id` together. CPU processes use gloo for
  collectives (see tests/multihost_test.py for what XLA's CPU runtime allows).
  Under Slurm with one task per node, the process drives every GPU of its node
  (jax would otherwise give it one).
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  missing = [k for k, v in given.items() if v is None]
  if missing and len(missing) < len(given):
    raise DistributedSetupError(
        f"--distributed with {', '.join(f'--{k}' for k in given if k not in missing)} "
        f"needs {', '.join('--' + k for k in missing)} too; give all three, or none on a "
        "Cloud TPU VM or in a Slurm job (they come from the environment there).")
  if num_processes is not None and not 0 <= int(process_id) < int(num_processes):
    raise DistributedSetupError(
        f"--process_id={process_id} must be in [0, --num_processes={num_processes}).")
  if _platforms().startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if local_device_ids is None and _slurm_one_task_per_node() and "cpu" not in _platforms():
    local_device_ids = _visible_gpus()
  kwargs = {k: v for k, v in given.items() if v is not None}
  if local_device_ids is not None:
    kwargs["local_device_ids"] = list(local_device_ids)
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    raise DistributedSetupError(
        f"jax.distributed.initialize({kwargs}) failed: {e}. Outside Cloud TPU and Slurm "
        "give --coordinator_address=HOST:PORT --num_processes=N --process_id=I.") from e
  describe()


def describe() -> str:
  """Logs (and returns) this process's place in the run."""
  line = (f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local of {jax.device_count()} devices "
          f"({jax.devices()[0].platform})")
  logging.info("Distributed: %s", line)
  return line


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_multiprocess() -> bool:
  return jax.process_count() > 1


# -- shares -------------------------------------------------------------------


def share(n: int, index: int | None = None, count: int | None = None) -> range:
  """The items of `range(n)` process `index` of `count` owns: one contiguous block.

  Blocks follow process order and differ in size by at most one (the first
  n % count processes take one more), so concatenating every process's block
  in process order gives range(n) back.
  """
  index = jax.process_index() if index is None else int(index)
  count = jax.process_count() if count is None else int(count)
  base, extra = divmod(int(n), count)
  start = index * base + min(index, extra)
  return range(start, start + base + (index < extra))


# -- gathers ------------------------------------------------------------------


def allgather_bytes(data: bytes) -> list[bytes]:
  """Every process's `data`, in process order (each process calls it once, in step)."""
  if jax.process_count() == 1:
    return [bytes(data)]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int32)))
  sizes = sizes.reshape(-1)
  cap = max(_MIN_GATHER_BYTES, 1 << int(max(int(sizes.max()), 1) - 1).bit_length())
  buf = np.zeros(cap, np.uint8)
  buf[:len(data)] = np.frombuffer(data, np.uint8)
  out = np.asarray(multihost_utils.process_allgather(buf))
  return [out[p, :int(sizes[p])].tobytes() for p in range(out.shape[0])]


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"{type(o).__name__} cannot be gathered across processes (JSON only)")


def allgather(obj: Any) -> list[Any]:
  """Every process's JSON-able `obj`, in process order (identity with one process).

  Floats survive exactly (JSON writes their shortest round-tripping repr).
  """
  if jax.process_count() == 1:
    return [obj]
  data = json.dumps(obj, default=_json_default).encode()
  return [json.loads(b) for b in allgather_bytes(data)]


def gather_rows(rows: Sequence[Any]) -> list[Any]:
  """Every process's rows concatenated in process order (the rows as given with one)."""
  if jax.process_count() == 1:
    return list(rows)
  return [r for part in allgather(list(rows)) for r in part]


def gather_by_id(ids: Sequence[int], rows: Sequence[Any]) -> list[Any]:
  """Every process's `rows`, numbered by `ids` (unique over processes), in id order."""
  numbered = gather_rows([(int(i), r) for i, r in zip(ids, rows, strict=True)])
  order = sorted(numbered, key=lambda x: x[0])
  if any(a[0] == b[0] for a, b in zip(order, order[1:])):
    raise ValueError("gather_by_id: two rows share an id; number rows uniquely over processes.")
  return [r for _, r in order]


def total(x: float | int) -> float | int:
  """The sum of `x` over processes."""
  return x if jax.process_count() == 1 else sum(allgather(x))


def same_everywhere(data: bytes) -> bool:
  """Whether every process holds the same bytes (compared by a hash)."""
  if jax.process_count() == 1:
    return True
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(data).digest()
  return len(set(allgather_bytes(digest))) == 1


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name`."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


# -- process-local rows of global arrays --------------------------------------


def check_batch_layout(mesh, rules=None) -> None:
  """Refuses a mesh on which processes would not each hold their own batch rows.

  Every process contributes its rows to a batch, so the batch axis must be
  split over the devices such that each process's devices hold one contiguous
  block of rows, the same size everywhere, and no two processes the same rows.
  """
  if jax.process_count() == 1:
    return
  from evejax import parallel  # pylint: disable=g-import-not-at-top
  shards = parallel.batch_shards(mesh, parallel.make_rules(rules))
  sharding = parallel.batch_sharding(mesh, 1, 0, parallel.make_rules(rules))
  blocks: dict[int, set[tuple[int, int]]] = {}
  for device, index in sharding.devices_indices_map((shards,)).items():
    sl = index[0]
    blocks.setdefault(device.process_index, set()).add(
        (sl.start or 0, shards if sl.stop is None else sl.stop))
  per = shards // jax.process_count() if shards % jax.process_count() == 0 else 0
  ok = per > 0
  for p, spans in blocks.items():
    spans = sorted(spans)
    contiguous = all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    ok = ok and contiguous and spans[-1][1] - spans[0][0] == per
  starts = sorted(min(s)[0] for s in blocks.values())
  ok = ok and len(set(starts)) == len(starts) == jax.process_count()
  if not ok:
    raise DistributedSetupError(
        f"mesh {dict(mesh.shape)} splits the batch {shards} ways over "
        f"{jax.process_count()} processes so that some process would not hold its own "
        "block of rows; make config.mesh.data x config.mesh.fsdp a multiple of the process "
        "count and keep config.mesh.tensor within one host (e.g. tensor <= devices per host).")


def _is_global(x) -> bool:
  return isinstance(x, jax.Array) and not x.is_fully_addressable


def put_local(tree: Any, shardings: Any, batch_axes: Any) -> Any:
  """Global arrays from each process's block of rows (`device_put` with one process).

  `tree`: numpy leaves holding this process's rows along each leaf's batch
  axis (`batch_axes`: an int per leaf), the same shape on every process, or
  leaves that are already global arrays (placed on their sharding as they are).
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  count = jax.process_count()

  def put(x, sharding, axis):
    if x is None:
      return None
    if _is_global(x):
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    shape = list(x.shape)
    shape[axis] *= count
    return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

  return jax.tree.map(put, tree, shardings, batch_axes)


def local_rows(x, axis: int = 0) -> np.ndarray:
  """This process's block of rows of a batch-sharded array (all of it with one process)."""
  if not _is_global(x):
    return np.asarray(x)
  spans: dict[tuple[int, int], Any] = {}
  for shard in x.addressable_shards:
    sl = shard.index[axis] if len(shard.index) > axis else slice(None)
    key = (sl.start or 0, x.shape[axis] if sl.stop is None else sl.stop)
    spans.setdefault(key, shard.data)   # replicas along other mesh axes repeat a block
  keys = sorted(spans)
  if any(a[1] != b[0] for a, b in zip(keys, keys[1:])):
    raise ValueError(f"this process's rows of an array of shape {x.shape} are not one "
                     f"contiguous block ({keys}); see check_batch_layout.")
  return np.concatenate([np.asarray(spans[k]) for k in keys], axis=axis)


# -- host memory --------------------------------------------------------------


def resident_mib() -> float:
  """This process's resident memory now (MiB; the peak where /proc is missing)."""
  try:
    with open("/proc/self/statm") as f:
      pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError, IndexError):
    import resource  # pylint: disable=g-import-not-at-top
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
