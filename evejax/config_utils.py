"""Building blocks shared by the config files in configs/.

Config files stay declarative: they pick a preset and set values; the blocks
here hold the defaults every recipe shares (model, mesh, optimizer, GRPO loss,
sandbox, checkpointing) so that a value has one home.
"""
from __future__ import annotations

from typing import Callable, Mapping

import ml_collections


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
          param_dtype: str = "float32", remat: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      preset=preset,        # evejax.models.presets name; a checkpoint's config.json wins
      dtype=dtype,          # activations
      param_dtype=param_dtype,
      remat=remat,
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
  return ml_collections.ConfigDict(dict(every=every, keep=keep, async_save=True))
