r"""Runs one evejax job: `python -m evejax.main --config configs/eve.py:tiny --workdir DIR`.

`--config path.py[:preset]`: the config file's `get_config(preset)` returns an
ml_collections.ConfigDict (`evejax.config_utils.load_config`); any value can be
overridden on the command line (`--config.eve.iterations=2`); an unknown preset
or key fails at once with the valid names.
`config.recipe` names the recipe module (`eve` -> `evejax.recipes.eve`, or a
full import path `pkg.module`), whose `run(config, workdir)` does the work. A
workdir that already holds checkpoints is resumed.

`--distributed` makes this process one of several running the same program
(`evejax.distributed`): on a Cloud TPU VM slice or in a Slurm job nothing
else is needed; elsewhere add --coordinator_address=HOST:PORT (process 0's),
--num_processes and --process_id. `launch/` starts the processes.
"""
from __future__ import annotations

import logging as logging_lib
import os
import sys

from absl import app
from absl import flags
from absl import logging

from evejax import config_utils
from evejax import storage

_XLA_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join(os.path.expanduser("~"), ".cache", "evejax", "xla"),
    "Directory of JAX's persistent compilation cache (re-runs and resumes skip "
    "compiles); empty disables it.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Join a multi-process run first (TPU pod slices, multi-node GPU, several local "
    "processes); on Cloud TPU and Slurm the rest comes from the environment.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "With --distributed outside Cloud TPU and Slurm: HOST:PORT where process 0 listens.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --coordinator_address: how many processes the run has.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --coordinator_address: this process's index, 0 .. N-1.")
_LOCAL_DEVICES = flags.DEFINE_list(
    "local_device_ids", None,
    "With --distributed: the local devices this process drives (default: all of them).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Where checkpoints, metrics and galleries go. Default: workdirs/<recipe>_<preset>.")


def default_workdir(config) -> str:
  preset = config.get("preset_name", None) or "run"
  return os.path.join("workdirs", f"{config.recipe}_{preset}")


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO chatter of checkpointing libraries (orbax logs every save step), and
  the tracebacks orbax logs for a full or unwritable disk (evejax reports those in
  one message: `evejax.storage`)."""

  def filter(self, record):
    library = any(f"/{lib}/" in record.pathname for lib in ("orbax", "etils"))
    if library and record.exc_info and storage.from_error(record.exc_info[1], "", "") is not None:
      record.exc_info, record.exc_text = None, None
    return record.levelno >= logging_lib.WARNING or not library


def main(argv, config):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for handler in logging_lib.getLogger().handlers + logging.get_absl_logger().handlers:
    handler.addFilter(_QuietLibraries())
  _initialize_distributed()
  if _XLA_CACHE.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", _XLA_CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  workdir = _WORKDIR.value or default_workdir(config)
  os.makedirs(workdir, exist_ok=True)
  logging.info("Config:\n%s", config)
  from evejax import recipes  # pylint: disable=g-import-not-at-top
  from evejax.recipes import runner  # pylint: disable=g-import-not-at-top
  runner.run_recipe(recipes.resolve(config.recipe), config, workdir)


def _initialize_distributed() -> None:
  """`--distributed`: joins the run (before anything else touches JAX)."""
  given = [f.name for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID, _LOCAL_DEVICES)
           if f.value is not None]
  if not _DISTRIBUTED.value:
    if given:
      raise app.UsageError(f"--{', --'.join(given)} need --distributed.")
    return
  from evejax import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
        None if _LOCAL_DEVICES.value is None else [int(i) for i in _LOCAL_DEVICES.value])
  except distributed.DistributedSetupError as e:
    raise app.UsageError(str(e)) from None


def _run():
  spec, overrides, rest = config_utils.split_overrides(sys.argv)
  try:
    if spec is None:
      raise config_utils.ConfigError("--config is required, e.g. --config configs/eve.py:tiny")
    config = config_utils.load_config(spec, overrides)
  except config_utils.ConfigError as e:
    print(f"evejax: config error: {e}", file=sys.stderr)
    sys.exit(2)
  config.lock()
  try:
    app.run(lambda argv: main(argv, config), argv=rest)
  except config_utils.ConfigError as e:
    print(f"evejax: config error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  _run()
