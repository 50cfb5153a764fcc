"""Train-state checkpoints with exact resume (orbax).

A checkpoint step holds three orbax items:
  state   any pytree of arrays (params, optimizer state, step, RNG keys), saved
          with `StandardSave`, restored onto the shardings the caller asks for;
  extra   a JSON dict of recipe state (data position, program queue, phase
          counters, metrics history...) so the host loop resumes exactly;
  meta    JSON bookkeeping: which state leaves were typed PRNG keys and their
          implementation, so they are re-wrapped on restore.

Saves are asynchronous: `maybe_save` returns once device arrays are copied to
host and the write continues in the background. A step directory appears only
when its save has committed (orbax writes into a temporary directory and
renames it), so a run killed mid-save leaves the previous steps intact; a
damaged latest step (deleted/zeroed files, missing commit marker) is skipped
with a warning and the previous one is used.

A full disk, an exceeded quota or an unwritable directory is one
`storage.StorageError` naming the directory, the bytes a save needs (the
latest checkpoint's size on disk) and the step that stays intact: checked
before each save on every process together, and recognised in orbax's errors
when a save fails all the same (from `maybe_save`, `wait` or `close`).

Several processes: every process calls save and restore together on one
directory they all reach; each writes its own shards of the arrays, process 0
the JSON items (so those must be the same on every process: the recipe
runner checks it).

HF safetensors import/export is not here: see `evejax.models.hf`.
"""
from __future__ import annotations

from collections.abc import Mapping
import contextlib
import json
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from evejax import distributed
from evejax import storage

_COMMIT_MARKER = "commit_success.txt"  # written by orbax when a step commits
_FORMAT = 1


def _is_key(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def keys_to_data(tree: Any) -> tuple[Any, dict[str, str]]:
  """Replaces typed PRNG key leaves by their uint32 key data.

  Returns the new tree and {leaf path: key implementation name} for the leaves
  that were keys (what `data_to_keys` needs to undo it).
  """
  impls = {}

  def convert(path, x):
    if _is_key(x):
      impls[jax.tree_util.keystr(path)] = str(jax.random.key_impl(x))
      return jax.random.key_data(x)
    return x

  return jax.tree_util.tree_map_with_path(convert, tree), impls


def data_to_keys(tree: Any, impls: Mapping[str, str]) -> Any:
  """Inverse of `keys_to_data`: wraps the listed leaves back into typed keys."""
  def convert(path, x):
    impl = impls.get(jax.tree_util.keystr(path))
    return x if impl is None else jax.random.wrap_key_data(x, impl=impl)

  return jax.tree_util.tree_map_with_path(convert, tree)


def _abstract_leaf(x: Any) -> Any:
  """ShapeDtypeStruct target for one leaf; typed keys become their key data."""
  if isinstance(x, np.ndarray):
    return x  # restored as numpy
  sharding = getattr(x, "sharding", None)
  if _is_key(x):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    # A spec shorter than the array leaves the trailing key-data dim whole.
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
  if not hasattr(x, "shape"):
    return x
  if sharding is None:
    # Unplaced targets restore onto the default device.
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _json_copy(extra: Any, what: str = "extra") -> Any:
  """A deep, JSON-clean copy (numpy scalars/arrays become Python values).

  Copying also snapshots the dict, so the caller may mutate it while the
  asynchronous save is still writing.
  """
  def default(o):
    if isinstance(o, np.generic):
      return o.item()
    if isinstance(o, (np.ndarray, jax.Array)):
      return np.asarray(o).tolist()
    if isinstance(o, (set, frozenset)):
      return sorted(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")

  try:
    return json.loads(json.dumps(extra, default=default))
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"Checkpoint {what} must be JSON-serializable (dicts, lists, str, numbers): {e}. "
        f"Convert the offending value before maybe_save.") from None


class CheckpointError(RuntimeError):
  """No checkpoint in a non-empty directory could be restored."""


class Checkpointer:
  """Saves every `save_every` steps, keeps the `keep` newest, resumes the latest.

  Usage:
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=10, keep=3)
    restored = ckpt.restore_latest(abstract_state)   # None on a fresh workdir
    for step in range(start, total):
      ...
      ckpt.maybe_save(step + 1, state, extra)
    ckpt.maybe_save(total, state, extra, force=True)
    ckpt.close()
  """

  def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int,
               async_save: bool = True):
    if keep is not None and keep < 1:
      raise ValueError(f"Checkpointer keep={keep}: must be >= 1 (or None to keep all).")
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every = int(save_every)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        create=True,
        # Temporary directories of saves killed mid-write are removed on start.
        cleanup_tmp_directories=True,
    )
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=("state", "extra", "meta"))
    except OSError as e:
      raise (storage.from_error(e, self.directory, "checkpoints") or e) from None
    self._failure: storage.StorageError | None = None   # raised once; close() stays quiet

  # --- saving -------------------------------------------------------------

  def should_save(self, step: int, force: bool = False) -> bool:
    if step in self._manager.all_steps():
      return False  # e.g. a forced final save right after a periodic one
    return force or (self.save_every > 0 and step % self.save_every == 0)

  def maybe_save(self, step: int, state: Any, extra: Mapping[str, Any] | None = None,
                 force: bool = False) -> bool:
    """Saves `state` and `extra` as `step` if due (or `force`); returns whether it did.

    Returns as soon as device arrays are copied to host; the write continues
    in the background (`wait()` blocks until it is committed).
    """
    step = int(step)
    if not self.should_save(step, force):
      return False
    extra = _json_copy(dict(extra or {}))
    data, impls = keys_to_data(state)
    # Host numpy leaves may be mutated in place by the caller during the write.
    data = jax.tree.map(lambda x: x.copy() if isinstance(x, np.ndarray) else x, data)
    meta = {"format": _FORMAT, "keys": impls, "time": time.time()}
    self._check_free(step, data, extra)
    with self._storage_errors(f"checkpoint step {step}"):
      saved = self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(data),
          extra=ocp.args.JsonSave(extra),
          meta=ocp.args.JsonSave(meta)), force=True)
    if saved:
      logging.info("Checkpoint step %d: saving to %s", step, self.directory)
    return saved

  def committed_steps(self) -> list[int]:
    """Steps whose directories are complete on disk (without asking orbax)."""
    try:
      names = os.listdir(self.directory)
    except OSError:
      return []
    return sorted(int(n) for n in names if n.isdigit()
                  and os.path.exists(os.path.join(self.directory, n, _COMMIT_MARKER)))

  def _intact(self) -> str:
    steps = self.committed_steps()
    return (f"The previous checkpoint (step {steps[-1]}) is intact." if steps
            else "No earlier checkpoint exists.")

  def _check_free(self, step: int, data: Any, extra: Any) -> None:
    """Refuses a save that cannot fit, on every process together, before writing."""
    steps = self.committed_steps()
    needed = storage.tree_bytes(os.path.join(self.directory, str(steps[-1]))) if steps else 0
    if not needed:   # the first save: raw bytes, an upper bound (orbax compresses)
      needed = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(data))
      needed += len(json.dumps(extra))
    try:
      storage.check_free(self.directory, needed, f"checkpoint step {step}", self._intact())
      problem = None
    except storage.StorageError as e:
      problem = str(e)
    if distributed.is_multiprocess():
      problem = next((p for p in distributed.allgather(problem) if p), None)
    if problem:
      self._failure = storage.StorageError(problem, self.directory, needed)
      raise self._failure

  @contextlib.contextmanager
  def _storage_errors(self, what: str):
    """Turns orbax's failures on a full / unwritable directory into one StorageError."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 -- orbax wraps OS errors in many types.
      error = storage.from_error(e, self.directory, what, after=self._intact())
      if error is None:
        raise
      self._failure = error
      raise error from None

  # --- restoring ----------------------------------------------------------

  def all_steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def _check_committed(self, step: int) -> None:
    step_dir = os.path.join(self.directory, str(step))
    for sub in ("", "state", "extra"):
      if not os.path.exists(os.path.join(step_dir, sub, _COMMIT_MARKER)):
        raise CheckpointError(f"{os.path.join(step_dir, sub)} has no {_COMMIT_MARKER}: "
                              f"its save never finished")

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores one step onto the shardings of `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (with `sharding`) or of
    arrays (their shapes, dtypes and shardings are used); typed PRNG key leaves
    are restored as typed keys.
    """
    self._check_committed(step)
    target = jax.tree.map(_abstract_leaf, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        extra=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    meta = restored["meta"] or {}
    impls = dict(meta.get("keys", {}))
    # Leaves that are keys in the target but were saved as data (e.g. by code
    # that called keys_to_data itself) still come back as keys.
    for path, x in jax.tree_util.tree_leaves_with_path(abstract_state):
      if _is_key(x):
        impls.setdefault(jax.tree_util.keystr(path), _impl_name(x))
    state = data_to_keys(restored["state"], impls)
    return state, dict(restored["extra"] or {})

  def read_extra(self, step: int) -> dict[str, Any]:
    """The `extra` JSON of one step, without reading its arrays."""
    self._check_committed(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        extra=ocp.args.JsonRestore()))
    return dict(restored["extra"] or {})

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, extra) of the newest readable checkpoint, or None if none.

    `abstract_state` is the restore target, or a function of a step's `extra`
    returning it (when the state's structure depends on host state, e.g. which
    frozen copies a run held); an exception that function raises (e.g. for a
    checkpoint of an incompatible format) propagates.

    A step that fails to restore (damaged files, missing commit marker) is
    logged as a warning and the previous step is tried. Once an older step
    restores, the damaged newer ones are renamed `<step>.corrupt-<time>` so
    that the resumed run can save those steps again.

    Raises:
      CheckpointError: checkpoints exist but none could be restored (e.g. the
        state structure changed since they were written).
    """
    self.wait()
    steps = self.all_steps()
    if not steps:
      return None
    failed: list[int] = []
    errors: list[str] = []
    for step in reversed(steps):
      try:
        target = abstract_state
        if callable(abstract_state):
          extra = self.read_extra(step)
          # Outside the fallback: a target function that refuses a step (e.g. an
          # incompatible format) speaks for the whole directory.
          target = _call_target(abstract_state, extra)
        state, extra = self.restore(step, target)
      except _TargetRefused as e:
        raise e.error from None
      except Exception as e:  # noqa: BLE001 -- any failure means "unreadable".
        msg = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        logging.warning("Checkpoint step %d in %s could not be restored (%s); "
                        "falling back to the previous step.", step, self.directory, msg)
        failed.append(step)
        errors.append(f"step {step}: {msg}")
        continue
      if failed:
        self._quarantine(failed)
      logging.info("Restored checkpoint step %d from %s", step, self.directory)
      return step, state, extra
    raise CheckpointError(
        f"None of the checkpoints {steps} in {self.directory} could be restored:\n  "
        + "\n  ".join(errors)
        + "\nIf the model or optimizer state changed shape, use a new --workdir; "
          "to start over, move that directory away.")

  def _quarantine(self, steps: list[int]) -> None:
    # Every process decided alike (they read the same files); process 0 renames,
    # and the others look again only once it has.
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        src = os.path.join(self.directory, str(step))
        dst = f"{src}.corrupt-{stamp}"
        logging.warning("Moving unreadable checkpoint %s to %s", src, dst)
        os.rename(src, dst)
    distributed.barrier("evejax_checkpoint_quarantine")
    self._manager.reload()

  # --- lifecycle ----------------------------------------------------------

  def wait(self) -> None:
    """Blocks until pending saves are committed (and old ones pruned)."""
    with self._storage_errors("a checkpoint (saved in the background)"):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and closes; after a StorageError was raised, quietly."""
    reported = self._failure
    try:
      self.wait()
      self._manager.close()
    except Exception:  # noqa: BLE001
      if reported is None:
        raise
      logging.warning("Checkpointer closed after a failed save: %s", reported)

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _TargetRefused(Exception):
  """Carries an exception raised by a restore-target function."""

  def __init__(self, error: Exception):
    super().__init__(str(error))
    self.error = error


def _call_target(fn, extra):
  try:
    return fn(extra)
  except Exception as e:  # noqa: BLE001 -- re-raised by restore_latest.
    raise _TargetRefused(e) from e


def _impl_name(x: Any) -> str:
  """PRNG implementation of a (possibly abstract) typed key leaf."""
  try:
    return str(jax.random.key_impl(x))
  except TypeError:
    # Abstract keys (ShapeDtypeStruct) carry their impl only on the dtype.
    return str(x.dtype._impl.name)  # pylint: disable=protected-access
