"""Building blocks shared by the config files in configs/.

Config files stay declarative: they pick a preset and set values; the blocks
here hold the defaults every recipe shares (model, mesh, optimizer, GRPO loss,
sandbox, checkpointing) so that a value has one home.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Callable, Mapping, Sequence

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
  """A mistake in a config a user can fix; printed as one clear message."""


def load_config(spec: str, overrides: Sequence[str] | Mapping[str, object] = ()
                ) -> ml_collections.ConfigDict:
  """The config of `path.py[:preset]` with `a.b=value` overrides applied.

  The one loader behind `python -m evejax.main`, the tools and the tests: a
  relative path that does not exist from the working directory is looked up in
  the repository (so `configs/eve.py:tiny` works from anywhere); an unknown
  preset or key fails with the valid names. Override values are Python
  literals (`3`, `1e-4`, `'("^vision/",)'`) or true/false in any case;
  anything else is a string.
  """
  module, arg = config_module(spec)
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:  # e.g. an unknown preset, which lists the valid ones
    raise ConfigError(str(e)) from None
  items = overrides.items() if hasattr(overrides, "items") else (
      o.split("=", 1) for o in overrides)
  for key, value in items:
    if isinstance(value, str):
      set_text(config, key, value)
    else:
      set_value(config, key, value)
  return config


def config_module(spec: str):
  """(the config file's module, the preset name or '') of `path.py[:preset]`.

  What a tool reads beside `get_config` (e.g. the experiment's `ARMS`).
  """
  path, _, arg = spec.partition(":")
  if not os.path.exists(path) and not os.path.isabs(path):
    path = os.path.join(REPO_ROOT, path)
  if not os.path.exists(path):
    raise ConfigError(f"config file {spec.partition(':')[0]!r} does not exist.")
  module_spec = importlib.util.spec_from_file_location(
      "_evejax_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, arg


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


def check_key(config: ml_collections.ConfigDict, key: str) -> None:
  """Fails with the valid names when `key` ('a.b.c') is not in `config`."""
  node, walked = config, "config"
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node:
      valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
      raise ConfigError(f"unknown key {walked}.{part} in --config.{key}; "
                        f"valid keys of {walked}: {valid}")
    node, walked = node[part], f"{walked}.{part}"


def set_value(config: ml_collections.ConfigDict, key: str, value) -> None:
  check_key(config, key)
  *path, last = key.split(".")
  node = config
  for part in path:
    node = node[part]
  if isinstance(node[last], str) and not isinstance(value, str):
    value = str(value)  # `--config.init.hf_dir=123` means the string
  try:
    node[last] = value
  except TypeError as e:  # a value of another type than the default's
    raise ConfigError(f"--config.{key}={value!r}: {e}") from None


def set_text(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """`--config.<key>=<text>`: a string field takes the text as it is (a path
  named `1e-4` or `true` stays that); any other field its literal."""
  check_key(config, key)
  current = config
  for part in key.split("."):
    current = current[part]
  set_value(config, key, text if isinstance(current, str) else _literal(text))


def _literal(text: str):
  if text.lower() in ("true", "false"):   # as shells and absl flags spell booleans
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def select_preset(arg: str | None, presets: Mapping[str, Callable[[], ml_collections.ConfigDict]],
                  default: str) -> ml_collections.ConfigDict:
  """Returns presets[arg] (or the default); unknown names list the valid ones."""
  name = arg or default
  if name not in presets:
    raise ValueError(
        f"Unknown preset {name!r}; valid presets: {', '.join(sorted(presets))}")
  config = presets[name]()
  config.preset_name = name
  return config


def model(preset: str = "tiny", *, dtype: str = "float32",
          param_dtype: str = "float32", remat: bool = False,
          attention: str = "auto") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      preset=preset,        # evejax.models.presets name; a checkpoint's config.json wins
      dtype=dtype,          # activations
      param_dtype=param_dtype,
      remat=remat,
      # auto | xla | cudnn | splash; auto: splash on TPU, cudnn on GPU, xla elsewhere.
      attention=attention,
  ))


def init(hf_dir: str = "") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      hf_dir=hf_dir,         # local HF Qwen2.5-VL directory; "" = random init (tiny only)
      tokenizer_dir="",      # "" = hf_dir's tokenizer, or the built-in one when hf_dir == ""
  ))


def mesh(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
  # -1 takes the remaining devices. Logical-axis rules live in evejax.parallel;
  # `rules` overrides them as ((logical, mesh_axes), ...).
  # `devices`: use the first N devices (-1: all), e.g. 1 for a CPU debug run.
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules=(),
                                        devices=-1))


def decoding(mode: str = "static") -> ml_collections.ConfigDict:
  """How the sampler decodes (evejax.sampling.Sampler's decode_mode and refill knobs)."""
  return ml_collections.ConfigDict(dict(
      mode=mode,               # static: chunks decode to their longest row | slots: refilled slots
      refill_fraction=0.25,    # slots: refill once this fraction of the slots is free
      refill_every=64,         # slots: and at the latest after this many steps (0: no limit)
  ))


def grpo(*, lr: float = 1e-6, kl_coef: float = 1e-3, clip_low: float = 0.2,
         clip_high: float = 0.2, dual_clip: float = 3.0,
         micro_batches: int = 1) -> ml_collections.ConfigDict:
  """The learner's config (evejax.rl.learner.default_train_config) with GRPO overrides.

  Defaults are verl/EasyR1's (reference/METHODS.md); the learner owns the full
  set of keys so that every one of them can be overridden from the command line.
  """
  from evejax.rl import learner  # pylint: disable=g-import-not-at-top
  c = learner.default_train_config()
  c.optimizer.lr = lr
  c.loss.kl_coef = kl_coef
  c.loss.clip_low, c.loss.clip_high, c.loss.dual_clip = clip_low, clip_high, dual_clip
  c.micro_batches = micro_batches
  return c


def sandbox(*, workers: int = 2, timeout_s: float = 10.0) -> ml_collections.ConfigDict:
  """evejax.sandbox.SandboxConfig fields (output checks live in config.checks)."""
  return ml_collections.ConfigDict(dict(
      workers=workers, queue_size=256, timeout_s=timeout_s, memory_mb=1024,
      file_size_mb=16, disk_mb=64, open_files=64, processes=32,
      output_bytes=16384, require=()))


def checkpoint(every: int = 10, keep: int = 3) -> ml_collections.ConfigDict:
  """Checkpoints, and what keeps a run's work when the machine stops (evejax.lifecycle)."""
  return ml_collections.ConfigDict(dict(
      every=every,          # schedule units (steps and stage ends) between checkpoints
      keep=keep,            # newest checkpoints kept
      async_save=True,      # write in the background while the next unit runs
      # SIGTERM, SIGINT or a jax preemption notice: finish the unit in flight, save a
      # checkpoint on every process, exit 0. False: the signal ends the run at once.
      on_preemption=True,
      # A unit (step, stage end, save) without progress for this long: log every thread's
      # stack and where the run is, exit 75. 0 = off. Covers the first step's compiles.
      watchdog_s=3600.0,
  ))
