r"""Runs one evejax job: `python -m evejax.main --config configs/eve.py:tiny --workdir DIR`.

`--config path.py[:preset]`: the config file's `get_config(preset)` returns an
ml_collections.ConfigDict (`evejax.config_utils.load_config`); any value can be
overridden on the command line (`--config.eve.iterations=2`); an unknown preset
or key fails at once with the valid names.
`config.recipe` names the recipe module (`eve` -> `evejax.recipes.eve`, or a
full import path `pkg.module`), whose `run(config, workdir)` does the work. A
workdir that already holds checkpoints is resumed.
"""
from __future__ import annotations

import importlib
import logging as logging_lib
import os
import sys

from absl import app
from absl import flags
from absl import logging

from evejax import config_utils

_XLA_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join(os.path.expanduser("~"), ".cache", "evejax", "xla"),
    "Directory of JAX's persistent compilation cache (re-runs and resumes skip "
    "compiles); empty disables it.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host TPU pods, multi-node GPU).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Where checkpoints, metrics and galleries go. Default: workdirs/<recipe>_<preset>.")


def resolve_recipe(name: str):
  """Imports the recipe module named by `config.recipe`."""
  module_name = name if "." in name else f"evejax.recipes.{name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise config_utils.ConfigError(
          f"config.recipe={name!r}: no module {module_name!r}. Built-in recipes: "
          f"{sorted(builtin_recipes())}; or give a full import path.") from None
    raise
  if not hasattr(module, "run"):
    raise config_utils.ConfigError(f"Recipe module {module_name!r} has no run(config, workdir).")
  return module


def builtin_recipes() -> list[str]:
  from evejax import recipes  # pylint: disable=g-import-not-at-top
  return list(recipes.BUILTIN)


def default_workdir(config) -> str:
  preset = config.get("preset_name", None) or "run"
  return os.path.join("workdirs", f"{config.recipe}_{preset}")


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO chatter of checkpointing libraries (orbax logs every save step)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "etils"))


def main(argv, config):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for handler in logging_lib.getLogger().handlers + logging.get_absl_logger().handlers:
    handler.addFilter(_QuietLibraries())
  if _DISTRIBUTED.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  if _XLA_CACHE.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", _XLA_CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  workdir = _WORKDIR.value or default_workdir(config)
  os.makedirs(workdir, exist_ok=True)
  logging.info("Config:\n%s", config)
  recipe = resolve_recipe(config.recipe)
  recipe.run(config, workdir)


def split_overrides(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
  """(config spec, 'a.b=value' overrides, the other arguments) of a command line."""
  spec, overrides, rest = None, [], []
  i = 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      spec, i = argv[i + 1], i + 1
    elif a.startswith("--config."):
      key, sep, value = a[len("--config."):].partition("=")
      if not sep and i + 1 < len(argv):
        value, i = argv[i + 1], i + 1
      overrides.append(f"{key}={value}")
    else:
      rest.append(a)
    i += 1
  return spec, overrides, rest


def _run():
  spec, overrides, rest = split_overrides(sys.argv)
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
