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
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules=()))


def grpo(*, lr: float = 1e-6, kl_coef: float = 1e-3, clip_low: float = 0.2,
         clip_high: float = 0.2, dual_clip: float = 3.0,
         micro_batches: int = 1) -> ml_collections.ConfigDict:
  """verl/EasyR1 GRPO defaults (reference/METHODS.md)."""
  return ml_collections.ConfigDict(dict(
      optimizer=dict(
          name="adamw", lr=lr, schedule="constant", warmup_steps=0,
          b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0),
      loss=dict(
          policy="ppo_clip", clip_low=clip_low, clip_high=clip_high,
          dual_clip=dual_clip, agg="token-mean", norm_constant=0.0,
          kl_coef=kl_coef, kl_estimator="low_var_kl", entropy_coef=0.0,
          advantage="grpo", adv_eps=1e-6),
      micro_batches=micro_batches,
      # Regexes on '/'-joined parameter paths; e.g. ("^visual/",) freezes the ViT.
      freeze=(),
      ref_on_host=False,
      logprob_chunk=0,           # >0: log-softmax over sequence chunks of this size
      max_nonfinite_in_a_row=5,
  ))


def sandbox(*, workers: int = 2, timeout_s: float = 10.0) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      workers=workers, timeout_s=timeout_s, cpu_s=10, memory_mb=1024,
      max_file_mb=16, max_output_chars=10_000, queue_size=256))


def checkpoint(every: int = 10, keep: int = 3) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(every=every, keep=keep, async_save=True))
