r"""python -m evejax.eval --config configs/eval.py:<benchmark-or-profile> --workdir OUT

    python -m evejax.eval --config configs/eval.py:mmstar \
        --config.init.hf_dir=/models/Qwen2.5-VL-7B-Instruct \
        --config.eval.data_dir=/data/LMUData --workdir /scratch/eval_7b

`--config.init.workdir=RUN_DIR` evaluates the latest checkpoint of an evejax
run instead. Running the same command again resumes: finished items are
skipped. See evejax/eval/cli.py and configs/eval.py.
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with a preset: configs/eval.py:mmstar.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go (resumed when it has some).")
_XLA_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join(os.path.expanduser("~"), ".cache", "evejax", "xla"),
    "Directory of JAX's persistent compilation cache; empty disables it.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/eval.py:mmstar")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: the folder results go to.")
  import jax  # pylint: disable=g-import-not-at-top
  if _XLA_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _XLA_CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  from evejax.eval import cli  # pylint: disable=g-import-not-at-top,redefined-outer-name
  os.makedirs(_WORKDIR.value, exist_ok=True)
  cli.run(config, _WORKDIR.value)


class _ConfigError(ValueError):
  pass


def _check_args(argv: list[str]) -> None:
  """One clear message for an unknown preset or override key (before absl parses)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  if spec is None:
    return
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise _ConfigError(f"config file {path!r} does not exist.")
  module_spec = importlib.util.spec_from_file_location("_evejax_eval_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(arg or None)
  except ValueError as e:
    raise _ConfigError(str(e)) from None
  for key in (a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")):
    node, walked = config, "config"
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
        raise _ConfigError(f"unknown key {walked}.{part} in --config.{key}; valid keys of "
                           f"{walked}: {valid}")
      node, walked = node[part], f"{walked}.{part}"


def _run():
  from evejax.eval import cli, readers, restore, runner  # pylint: disable=g-import-not-at-top
  user_errors = (readers.DataError, restore.RestoreError, runner.EvalError,
                 cli._loading.SetupError)  # pylint: disable=protected-access
  try:
    _check_args(sys.argv[1:])
    app.run(main)
  except _ConfigError as e:
    print(f"evejax.eval: config error: {e}", file=sys.stderr)
    sys.exit(2)
  except user_errors as e:
    print(f"evejax.eval: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  _run()
