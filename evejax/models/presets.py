"""Model shapes: `ModelConfig` and the named presets (tiny … 72b).

A ModelConfig is a frozen dataclass, hashable, so it can be a static argument of
`jax.jit`. Real shapes follow the released Qwen2.5-VL config.json files; a
checkpoint's own config.json always wins (see `evejax.models.hf.config_from_hf`).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  out_hidden_size: int = 3584  # = text hidden size
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112  # pixels; 112 / 14 / 2 = 4 merged units per window side
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Values in one flattened patch row: 3 * 2 * 14 * 14 = 1176."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size ** 2

  @property
  def window_merged(self) -> int:
    """Window side in merged units (4 for the released models)."""
    return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_layers: int = 28
  num_heads: int = 28
  num_kv_heads: int = 4
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  mrope_section: tuple[int, ...] = (16, 24, 24)
  tie_word_embeddings: bool = False

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  # Compute dtype of activations; params are cast to it inside the model.
  # Softmax, log-softmax, RMSNorm statistics and rotary angles stay fp32.
  dtype: str = "float32"
  # Recompute each decoder/vision block in the backward pass (saves activations).
  remat: bool = False

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


# Special tokens of the built-in tokenizer (evejax.processing.tokenizer), with
# the same names as Qwen2.5-VL's; their ids are their positions here.
BUILTIN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)


def tiny(vocab_size: int = 2048) -> ModelConfig:
  """A few-MB model that runs in milliseconds on CPU; uses the built-in tokenizer.

  The vision tower keeps one full-attention block and window attention elsewhere
  so both paths are exercised. Special-token ids are those of the built-in
  tokenizer: position in BUILTIN_SPECIAL_TOKENS.
  """
  special = {t: i for i, t in enumerate(BUILTIN_SPECIAL_TOKENS)}
  return ModelConfig(
      vision=VisionConfig(depth=2, hidden_size=64, intermediate_size=128,
                          num_heads=4, out_hidden_size=128,
                          fullatt_block_indexes=(1,)),
      text=TextConfig(vocab_size=vocab_size, hidden_size=128,
                      intermediate_size=256, num_layers=2, num_heads=4,
                      num_kv_heads=2, mrope_section=(4, 6, 6),
                      tie_word_embeddings=True),
      image_token_id=special["<|image_pad|>"],
      video_token_id=special["<|video_pad|>"],
      vision_start_token_id=special["<|vision_start|>"],
      vision_end_token_id=special["<|vision_end|>"],
  )


def _vision(out_hidden: int, **kw) -> VisionConfig:
  return VisionConfig(depth=32, hidden_size=1280, intermediate_size=3420,
                      num_heads=16, out_hidden_size=out_hidden,
                      fullatt_block_indexes=(7, 15, 23, 31), **kw)


PRESETS = {
    "tiny": tiny,
    "qwen2_5_vl_3b": lambda: ModelConfig(
        vision=_vision(2048),
        text=TextConfig(vocab_size=151936, hidden_size=2048,
                        intermediate_size=11008, num_layers=36, num_heads=16,
                        num_kv_heads=2, tie_word_embeddings=True)),
    "qwen2_5_vl_7b": lambda: ModelConfig(
        vision=_vision(3584),
        text=TextConfig(vocab_size=152064, hidden_size=3584,
                        intermediate_size=18944, num_layers=28, num_heads=28,
                        num_kv_heads=4, tie_word_embeddings=False)),
    "qwen2_5_vl_32b": lambda: ModelConfig(
        vision=_vision(5120),
        text=TextConfig(vocab_size=152064, hidden_size=5120,
                        intermediate_size=27648, num_layers=64, num_heads=40,
                        num_kv_heads=8, tie_word_embeddings=False)),
    "qwen2_5_vl_72b": lambda: ModelConfig(
        vision=_vision(8192),
        text=TextConfig(vocab_size=152064, hidden_size=8192,
                        intermediate_size=29568, num_layers=80, num_heads=64,
                        num_kv_heads=8, tie_word_embeddings=False)),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  """Returns the named preset; unknown names list the valid ones."""
  if name not in PRESETS:
    raise ValueError(
        f"Unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
  cfg = PRESETS[name]()
  return dataclasses.replace(cfg, **overrides) if overrides else cfg
