"""The model families evejax implements, and everything that differs between them.

    family = families.of(model_config)      # by ModelConfig.family
    family = families.from_hf_config(cfg)   # by a config.json's model_type

A `Family` names, for one architecture: its flax module (a
`vlm_base.VLMBase` subclass; `evejax.models.vlm` applies it), its Hugging Face
checkpoint conventions (model_type, architecture class, tensor names,
config.json conversion) and the facts host processing needs (image
normalisation, default resize bounds, the chat template's default system
message). Nothing above `evejax.models` branches on the family: it asks this
registry, or calls `vlm`, `hf` and `processing`, which do.

| | qwen2_5_vl | qwen3_vl |
|---|---|---|
| patch / resize factor | 14 / 28 | 16 / 32 |
| image mean, std | CLIP | 0.5, 0.5 |
| default pixels | 56^2 .. 28^2 * 1280 | 256^2 .. 4096^2 |
| default system message | "You are a helpful assistant." | none |

Qwen3.5 (`qwen3_5`) processes images as Qwen3-VL does (the same tower, patch
16, mean = std = 0.5, 256^2 .. 4096^2 pixels) with its own vocabulary ids
(image pad 248056, ...), no default system message, and a think switch in
its chat template (`Family.thinking`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from evejax.models.presets import ModelConfig
from evejax.models.qwen2_5_vl import checkpoint as qwen2_5_vl_checkpoint
from evejax.models.qwen2_5_vl.model import Qwen2_5_VL
from evejax.models.qwen3_5 import checkpoint as qwen3_5_checkpoint
from evejax.models.qwen3_5.model import Qwen3_5
from evejax.models.qwen3_vl import checkpoint as qwen3_vl_checkpoint
from evejax.models.qwen3_vl.model import Qwen3VL

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class Family:
  """One architecture: its module, checkpoint conventions and host processing."""
  name: str
  module: type                     # the flax module (vlm_base.VLMBase subclass)
  # Hugging Face checkpoints.
  hf_model_type: str               # config.json "model_type"
  hf_architecture: str             # the transformers class that loads it
  config_from_hf: Callable[[dict, str], ModelConfig]
  config_to_hf: Callable[[ModelConfig, str], dict]
  tensor_table: Callable[[ModelConfig], list]
  alt_names: Callable[[str], list[str]]  # names a tensor may have on disk
  # Host processing (a checkpoint's preprocessor_config.json overrides these).
  image_mean: tuple[float, ...]
  image_std: tuple[float, ...]
  min_pixels: int
  max_pixels: int
  default_system: str | None       # inserted when a chat has no system message
  # The chat template's think switch (enable_thinking) and its default: None
  # when the template has none; True opens <think> after the generation
  # prompt, False closes an empty think block (`processing.chat`).
  thinking: bool | None = None


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family(
        name="qwen2_5_vl", module=Qwen2_5_VL,
        hf_model_type=qwen2_5_vl_checkpoint.HF_MODEL_TYPE,
        hf_architecture=qwen2_5_vl_checkpoint.HF_ARCHITECTURE,
        config_from_hf=qwen2_5_vl_checkpoint.config_from_hf,
        config_to_hf=qwen2_5_vl_checkpoint.config_to_hf,
        tensor_table=qwen2_5_vl_checkpoint.tensor_table,
        alt_names=qwen2_5_vl_checkpoint.alt_names,
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
        default_system="You are a helpful assistant."),
    "qwen3_vl": Family(
        name="qwen3_vl", module=Qwen3VL,
        hf_model_type=qwen3_vl_checkpoint.HF_MODEL_TYPE,
        hf_architecture=qwen3_vl_checkpoint.HF_ARCHITECTURE,
        config_from_hf=qwen3_vl_checkpoint.config_from_hf,
        config_to_hf=qwen3_vl_checkpoint.config_to_hf,
        tensor_table=qwen3_vl_checkpoint.tensor_table,
        alt_names=qwen3_vl_checkpoint.alt_names,
        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
        min_pixels=256 * 256, max_pixels=4096 * 4096,
        default_system=None),
    "qwen3_5": Family(
        name="qwen3_5", module=Qwen3_5,
        hf_model_type=qwen3_5_checkpoint.HF_MODEL_TYPE,
        hf_architecture=qwen3_5_checkpoint.HF_ARCHITECTURE,
        config_from_hf=qwen3_5_checkpoint.config_from_hf,
        config_to_hf=qwen3_5_checkpoint.config_to_hf,
        tensor_table=qwen3_5_checkpoint.tensor_table,
        alt_names=qwen3_5_checkpoint.alt_names,
        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
        min_pixels=256 * 256, max_pixels=4096 * 4096,
        default_system=None,
        # The released templates think unless enable_thinking is false (the
        # 0.8B's reportedly defaults to off). evejax's recipes ask for their
        # own <think>...</think> in the reply and their format rewards parse
        # it there, so prompts close the template's block by default, as
        # enable_thinking=False does; thinking=True opens it (native).
        thinking=False),
}


def get(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"Unknown model family {name!r}; evejax implements "
                     f"{sorted(FAMILIES)}.")
  return FAMILIES[name]


def of(config: ModelConfig) -> Family:
  """The family of a ModelConfig."""
  return get(config.family)


def implemented() -> str:
  """'qwen2_5_vl (Qwen2_5_VLForConditionalGeneration), ...' for error messages."""
  return ", ".join(f"{f.hf_model_type} ({f.hf_architecture})"
                   for f in FAMILIES.values())


def from_hf_config(cfg: dict[str, Any], where: str = "config.json") -> Family:
  """The family a parsed config.json describes (by model_type, else architectures)."""
  model_type = cfg.get("model_type")
  archs = cfg.get("architectures") or []
  for f in FAMILIES.values():
    if model_type == f.hf_model_type or (
        model_type is None and f.hf_architecture in archs):
      return f
  raise ValueError(
      f"{where} describes model_type {model_type!r} (architectures {archs}), "
      f"which evejax does not implement; it implements {implemented()}.")
