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

from evejax import config_utils

_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go (resumed when it has some).")
_XLA_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join(os.path.expanduser("~"), ".cache", "evejax", "xla"),
    "Directory of JAX's persistent compilation cache; empty disables it.")


def main(argv, config):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: the folder results go to.")
  import jax  # pylint: disable=g-import-not-at-top
  if _XLA_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _XLA_CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  from evejax.eval import cli  # pylint: disable=g-import-not-at-top,redefined-outer-name
  os.makedirs(_WORKDIR.value, exist_ok=True)
  cli.run(config, _WORKDIR.value)


def _check_judge_override(overrides) -> None:
  """`--config.eval.judge=pkg:fn` (a string before the judge became a block): one clear error."""
  for o in overrides:
    if o.split("=", 1)[0] == "eval.judge":
      raise config_utils.ConfigError(
          "eval.judge is a block: name a judge model with --config.eval.judge.hf_dir=DIR, or a "
          f"Python callable with --config.eval.judge.fn={o.split('=', 1)[-1]}")


def _run():
  from evejax.eval import judge, readers, restore, runner  # pylint: disable=g-import-not-at-top
  from evejax import loading  # pylint: disable=g-import-not-at-top
  user_errors = (readers.DataError, restore.RestoreError, runner.EvalError, loading.SetupError,
                 judge.JudgeError)
  spec, overrides, rest = config_utils.split_overrides(sys.argv)
  try:
    if spec is None:
      raise config_utils.ConfigError(
          "--config is required, e.g. --config configs/eval.py:mmstar")
    _check_judge_override(overrides)
    config = config_utils.load_config(spec, overrides)
    config.lock()
    app.run(lambda argv: main(argv, config), argv=rest)
  except config_utils.ConfigError as e:
    print(f"evejax.eval: config error: {e}", file=sys.stderr)
    sys.exit(2)
  except user_errors as e:
    print(f"evejax.eval: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  _run()
