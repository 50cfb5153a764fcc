r"""Runs one evejax job: `python -m evejax.main --config configs/eve.py:tiny --workdir DIR`.

The config file's `get_config(arg)` returns an ml_collections.ConfigDict; any
value can be overridden on the command line (`--config.eve.iterations=2`).
`config.recipe` names the recipe module (`eve` -> `evejax.recipes.eve`, or a
full import path `pkg.module`), whose `run(config, workdir)` does the work. A
workdir that already holds checkpoints is resumed.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging as logging_lib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/eve.py:tiny.",
    lock_config=True)
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


class ConfigError(ValueError):
  """A mistake in the config a user can fix; printed as one clear message."""


def resolve_recipe(name: str):
  """Imports the recipe module named by `config.recipe`."""
  module_name = name if "." in name else f"evejax.recipes.{name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise ConfigError(
          f"config.recipe={name!r}: no module {module_name!r}. Built-in recipes: "
          f"{sorted(builtin_recipes())}; or give a full import path.") from None
    raise
  if not hasattr(module, "run"):
    raise ConfigError(f"Recipe module {module_name!r} has no run(config, workdir).")
  return module


def builtin_recipes() -> list[str]:
  recipes_dir = os.path.join(os.path.dirname(__file__), "recipes")
  return sorted(
      f[:-3] for f in os.listdir(recipes_dir)
      if f.endswith(".py") and not f.startswith("_") and "_" not in f)


def default_workdir(config) -> str:
  preset = config.get("preset_name", None) or "run"
  return os.path.join("workdirs", f"{config.recipe}_{preset}")


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO chatter of checkpointing libraries (orbax logs every save step)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "etils"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/eve.py:tiny")
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


def _load_config_file(spec: str):
  """Loads `path.py[:arg]` the way config_flags does, to check it up front."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist.")
  module_spec = importlib.util.spec_from_file_location("_evejax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ValueError as e:  # e.g. an unknown preset, which lists the valid ones
    raise ConfigError(str(e)) from None


def check_args(argv: list[str]) -> None:
  """Fails with one clear message on an unknown preset or override key.

  ml_collections reports these as multi-screen tracebacks; a user wants the
  name that was wrong and the names that would have been right.
  """
  spec, overrides = None, []
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
    elif a.startswith("--config."):
      overrides.append(a[len("--config."):].split("=", 1)[0])
  if spec is None:
    return
  config = _load_config_file(spec)
  for key in overrides:
    node, walked = config, "config"
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
        raise ConfigError(f"unknown key {walked}.{part} in --config.{key}; "
                          f"valid keys of {walked}: {valid}")
      node, walked = node[part], f"{walked}.{part}"


def _run():
  try:
    check_args(sys.argv[1:])
    app.run(main)
  except ConfigError as e:
    print(f"evejax: config error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  _run()
