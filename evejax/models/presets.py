"""Model shapes: `ModelConfig` and the named presets of every family.

A ModelConfig is a frozen dataclass, hashable, so it can be a static argument of
`jax.jit`. Its `family` names the architecture ("qwen2_5_vl", "qwen3_vl",
"qwen3_5");
`evejax.models.families` maps that name to the family's modules, processing
and checkpoint names. Each family has its own vision and text config classes
(fields are what its modules read, nothing else); the fields shared by both
(sizes, patch geometry, `head_dim`, `patch_dim`, `merge_unit`) carry the same
names, so code above the model reads them without knowing the family.

Real shapes follow the released config.json files; a checkpoint's own
config.json always wins (see `evejax.models.hf.config_from_hf`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Qwen2.5-VL's vision tower (window attention, RMSNorm, SwiGLU)."""
  FAMILY: ClassVar[str] = "qwen2_5_vl"
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

  def with_depth(self, depth: int) -> "VisionConfig":
    """The tower cut to its first `depth` blocks (e.g. for benchmarks); the
    full-attention blocks past the cut are dropped (the last block is full
    if none is left)."""
    full = tuple(i for i in self.fullatt_block_indexes if i < depth)
    return dataclasses.replace(self, depth=depth,
                               fullatt_block_indexes=full or (depth - 1,))


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Qwen2.5-VL's Qwen2 decoder (q/k/v bias, sectioned M-RoPE)."""
  FAMILY: ClassVar[str] = "qwen2_5_vl"
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
class Qwen3VisionConfig:
  """Qwen3-VL's vision tower (learned position table, LayerNorm, DeepStack)."""
  FAMILY: ClassVar[str] = "qwen3_vl"
  # No window attention: every image is one attention segment.
  window_merged: ClassVar[None] = None
  depth: int = 27
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_heads: int = 16
  out_hidden_size: int = 4096  # = text hidden size
  in_channels: int = 3
  patch_size: int = 16
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  # Rows of the learned absolute position table, a square grid (48 x 48).
  num_position_embeddings: int = 2304
  # Vision blocks whose outputs feed the DeepStack mergers; feature k is added
  # to the decoder's stream after decoder layer k.
  deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)
  layer_norm_eps: float = 1e-6
  rope_theta: float = 10000.0

  def __post_init__(self):
    side = math.isqrt(self.num_position_embeddings)
    if side * side != self.num_position_embeddings:
      raise ValueError(
          f"Qwen3VisionConfig.num_position_embeddings="
          f"{self.num_position_embeddings} is not a square; the position "
          "table is a square grid (2304 = 48 x 48 in the released models).")
    bad = [i for i in self.deepstack_visual_indexes
           if not 0 <= i < self.depth]
    if bad or len(set(self.deepstack_visual_indexes)) != len(
        self.deepstack_visual_indexes):
      raise ValueError(
          f"Qwen3VisionConfig.deepstack_visual_indexes="
          f"{self.deepstack_visual_indexes} must be distinct vision block "
          f"indexes in [0, depth={self.depth}).")
    if self.head_dim % 4:
      raise ValueError(
          f"Qwen3VisionConfig: head_dim {self.head_dim} (= hidden_size / "
          "num_heads) must be a multiple of 4 for the 2D rotary embedding.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Values in one flattened patch row: 3 * 2 * 16 * 16 = 1536."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size ** 2

  @property
  def position_side(self) -> int:
    """Side of the square position table (48 for 2304 rows)."""
    return math.isqrt(self.num_position_embeddings)

  def with_depth(self, depth: int) -> "Qwen3VisionConfig":
    """The tower cut to its first `depth` blocks (e.g. for benchmarks); the
    DeepStack taps past the cut are dropped."""
    taps = tuple(i for i in self.deepstack_visual_indexes if i < depth)
    return dataclasses.replace(self, depth=depth, deepstack_visual_indexes=taps)


@dataclasses.dataclass(frozen=True)
class Qwen3TextConfig:
  """Qwen3-VL's Qwen3 decoder (q/k RMSNorm, explicit head_dim, interleaved M-RoPE)."""
  FAMILY: ClassVar[str] = "qwen3_vl"
  vocab_size: int = 151936
  hidden_size: int = 4096
  intermediate_size: int = 12288
  num_layers: int = 36
  num_heads: int = 32
  num_kv_heads: int = 8
  # Set explicitly: heads * head_dim may differ from hidden_size (4B: 4096 vs 2560).
  head_dim: int = 128
  rope_theta: float = 5_000_000.0
  rms_norm_eps: float = 1e-6
  # (T, H, W): frequency channel j takes H if j % 3 == 1 and j < 3 * sections[1],
  # W if j % 3 == 2 and j < 3 * sections[2], else T.
  mrope_section: tuple[int, ...] = (24, 20, 20)
  tie_word_embeddings: bool = False

  def __post_init__(self):
    if len(self.mrope_section) != 3:
      raise ValueError(f"Qwen3TextConfig.mrope_section={self.mrope_section} "
                       "needs three sizes (temporal, height, width).")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"Qwen3TextConfig: num_heads={self.num_heads} is not a "
                       f"multiple of num_kv_heads={self.num_kv_heads}.")


@dataclasses.dataclass(frozen=True)
class Qwen3_5VisionConfig(Qwen3VisionConfig):
  """Qwen3.5's vision tower: Qwen3-VL's without DeepStack."""
  FAMILY: ClassVar[str] = "qwen3_5"
  deepstack_visual_indexes: tuple[int, ...] = ()

  def __post_init__(self):
    super().__post_init__()
    if self.deepstack_visual_indexes:
      raise ValueError(
          f"Qwen3_5VisionConfig.deepstack_visual_indexes="
          f"{self.deepstack_visual_indexes}: Qwen3.5 has no DeepStack mergers.")


LINEAR_ATTENTION, FULL_ATTENTION = "linear_attention", "full_attention"


@dataclasses.dataclass(frozen=True)
class Qwen3_5TextConfig:
  """Qwen3.5's hybrid decoder: Gated DeltaNet layers and gated full attention.

  `layer_types[i]` is LINEAR_ATTENTION or FULL_ATTENTION; left empty, layer i
  is full iff (i + 1) % full_attention_interval == 0 (transformers' rule).
  """
  FAMILY: ClassVar[str] = "qwen3_5"
  vocab_size: int = 248320
  hidden_size: int = 4096
  intermediate_size: int = 12288
  num_layers: int = 32
  layer_types: tuple[str, ...] = ()
  full_attention_interval: int = 4
  # Gated full attention: the query projection also emits a per-head gate.
  num_heads: int = 16
  num_kv_heads: int = 4
  head_dim: int = 256
  rope_theta: float = 10_000_000.0
  # Rotary on the first head_dim * factor channels only (64 of 256).
  partial_rotary_factor: float = 0.25
  mrope_section: tuple[int, ...] = (11, 11, 10)
  rms_norm_eps: float = 1e-6
  # Gated DeltaNet: Hk key heads of dk, Hv value heads of dv (Hv % Hk == 0).
  linear_num_key_heads: int = 16
  linear_num_value_heads: int = 32
  linear_key_head_dim: int = 128
  linear_value_head_dim: int = 128
  linear_conv_kernel_dim: int = 4
  # Tokens per chunk of the chunked delta rule (scoring, training, prefill).
  chunk_size: int = 64
  tie_word_embeddings: bool = False

  def __post_init__(self):
    types = tuple(self.layer_types) or tuple(
        FULL_ATTENTION if (i + 1) % self.full_attention_interval == 0
        else LINEAR_ATTENTION for i in range(self.num_layers))
    object.__setattr__(self, "layer_types", types)
    bad = sorted(set(types) - {LINEAR_ATTENTION, FULL_ATTENTION})
    if bad or len(types) != self.num_layers:
      raise ValueError(
          f"Qwen3_5TextConfig.layer_types has {len(types)} entries {bad or ''} "
          f"for {self.num_layers} layers; give one of {LINEAR_ATTENTION!r}, "
          f"{FULL_ATTENTION!r} per layer.")
    if len(self.mrope_section) != 3 or sum(self.mrope_section) > self.rotary_dim // 2:
      raise ValueError(
          f"Qwen3_5TextConfig.mrope_section={self.mrope_section} needs three "
          f"sizes summing to at most rotary_dim / 2 = {self.rotary_dim // 2}.")
    if self.chunk_size < 1 or self.chunk_size & (self.chunk_size - 1):
      raise ValueError(f"Qwen3_5TextConfig.chunk_size={self.chunk_size} must be "
                       "a power of 2 (64 as in the reference).")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"Qwen3_5TextConfig: num_heads={self.num_heads} is not a "
                       f"multiple of num_kv_heads={self.num_kv_heads}.")
    if self.linear_num_value_heads % self.linear_num_key_heads:
      raise ValueError(
          f"Qwen3_5TextConfig: linear_num_value_heads="
          f"{self.linear_num_value_heads} is not a multiple of "
          f"linear_num_key_heads={self.linear_num_key_heads}.")

  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.partial_rotary_factor)

  @property
  def value_heads_per_key_head(self) -> int:
    return self.linear_num_value_heads // self.linear_num_key_heads

  @property
  def linear_group_width(self) -> int:
    """Channels of in_qkv per key head: its q, its k, its r value heads."""
    return (2 * self.linear_key_head_dim
            + self.value_heads_per_key_head * self.linear_value_head_dim)

  @property
  def period(self) -> int:
    """The shortest repeat of layer_types (num_layers when irregular)."""
    n, t = self.num_layers, self.layer_types
    return next(p for p in range(1, n + 1)
                if n % p == 0 and all(t[i] == t[i % p] for i in range(n)))

  @property
  def full_layers(self) -> tuple[int, ...]:
    return tuple(i for i, k in enumerate(self.layer_types) if k == FULL_ATTENTION)

  @property
  def linear_layers(self) -> tuple[int, ...]:
    return tuple(i for i, k in enumerate(self.layer_types) if k == LINEAR_ATTENTION)


# `ModelConfig.attention` values (see `evejax.models.attention`).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  # The architecture; `evejax.models.families` maps it to modules, processing
  # and checkpoint names. The vision/text configs must be that family's.
  family: str = "qwen2_5_vl"
  vision: VisionConfig | Qwen3VisionConfig | Qwen3_5VisionConfig = VisionConfig()
  text: TextConfig | Qwen3TextConfig | Qwen3_5TextConfig = TextConfig()
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  # Compute dtype of activations; params are cast to it inside the model.
  # Softmax, log-softmax, RMSNorm statistics and rotary angles stay fp32.
  dtype: str = "float32"
  # Recompute each decoder/vision block in the backward pass (saves activations).
  remat: bool = False
  # Attention for training, scoring and prefill: auto | xla | cudnn | splash
  # (auto: splash on TPU, cudnn on GPU, xla elsewhere); decode steps read the
  # KV cache with xla whatever this says.
  attention: str = "auto"

  def __post_init__(self):
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(
          f"ModelConfig.attention={self.attention!r} is not one of "
          f"{', '.join(ATTENTION_IMPLEMENTATIONS)} (config.model.attention).")
    # Each config class names its family (FAMILY); `evejax.models.families`
    # is the registry of the families themselves.
    for part in ("vision", "text"):
      got = getattr(self, part)
      if getattr(got, "FAMILY", None) != self.family:
        raise ValueError(
            f"ModelConfig(family={self.family!r}) has a {part} config of "
            f"family {getattr(got, 'FAMILY', None)!r} ({type(got).__name__}); "
            "the family and both configs must agree. Build configs with "
            "presets.get_preset or hf.config_from_hf.")
    if self.family == "qwen3_vl":
      n = len(self.vision.deepstack_visual_indexes)
      if n > self.text.num_layers:
        raise ValueError(
            f"{n} DeepStack features (vision.deepstack_visual_indexes) but "
            f"only {self.text.num_layers} decoder layers to add them after; "
            "drop indexes or add layers.")

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


# Special tokens of the built-in tokenizer (evejax.processing.tokenizer), with
# the same names as Qwen2.5-VL's; their ids are their positions here.
BUILTIN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)


def tiny(vocab_size: int = 2048, num_layers: int = 2) -> ModelConfig:
  """A few-MB model that runs in milliseconds on CPU; uses the built-in tokenizer.

  The vision tower keeps one full-attention block and window attention elsewhere
  so both paths are exercised. Special-token ids are those of the built-in
  tokenizer: position in BUILTIN_SPECIAL_TOKENS. `tiny_deep` has 4 decoder
  layers, for in-context lookups (answer the letter of the option a cue names)
  that 2 layers do not learn in a CPU-sized run.
  """
  special = {t: i for i, t in enumerate(BUILTIN_SPECIAL_TOKENS)}
  return ModelConfig(
      vision=VisionConfig(depth=2, hidden_size=64, intermediate_size=128,
                          num_heads=4, out_hidden_size=128,
                          fullatt_block_indexes=(1,)),
      text=TextConfig(vocab_size=vocab_size, hidden_size=128,
                      intermediate_size=256, num_layers=num_layers, num_heads=4,
                      num_kv_heads=2, mrope_section=(4, 6, 6),
                      tie_word_embeddings=True),
      image_token_id=special["<|image_pad|>"],
      video_token_id=special["<|video_pad|>"],
      vision_start_token_id=special["<|vision_start|>"],
      vision_end_token_id=special["<|vision_end|>"],
  )


def qwen3_vl_tiny(vocab_size: int = 2048) -> ModelConfig:
  """The Qwen3-VL counterpart of `tiny`, on the built-in tokenizer.

  Exercises what the family adds: a 4x4 position table resampled to every
  image's grid, DeepStack after both decoder layers (from vision blocks 0 and
  1), GQA, and head_dim 48 != hidden / heads = 32.
  """
  special = {t: i for i, t in enumerate(BUILTIN_SPECIAL_TOKENS)}
  return ModelConfig(
      family="qwen3_vl",
      vision=Qwen3VisionConfig(depth=2, hidden_size=64, intermediate_size=128,
                               num_heads=4, out_hidden_size=128,
                               num_position_embeddings=16,
                               deepstack_visual_indexes=(0, 1)),
      text=Qwen3TextConfig(vocab_size=vocab_size, hidden_size=128,
                           intermediate_size=256, num_layers=2, num_heads=4,
                           num_kv_heads=2, head_dim=48, mrope_section=(8, 8, 8),
                           tie_word_embeddings=True),
      image_token_id=special["<|image_pad|>"],
      video_token_id=special["<|video_pad|>"],
      vision_start_token_id=special["<|vision_start|>"],
      vision_end_token_id=special["<|vision_end|>"],
  )


def _qwen3_vl(text_hidden: int, layers: int, heads: int, intermediate: int,
              tie: bool, large_vision: bool) -> ModelConfig:
  """A released Qwen3-VL shape (8 KV heads and head_dim 128 in all of them).

  The 2B/4B towers are 24 blocks of 1024 (DeepStack from blocks 5, 11, 17);
  8B/32B use 27 blocks of 1152 (from 8, 16, 24).
  """
  if large_vision:
    vision = Qwen3VisionConfig(depth=27, hidden_size=1152, intermediate_size=4304,
                               num_heads=16, out_hidden_size=text_hidden,
                               deepstack_visual_indexes=(8, 16, 24))
  else:
    vision = Qwen3VisionConfig(depth=24, hidden_size=1024, intermediate_size=4096,
                               num_heads=16, out_hidden_size=text_hidden,
                               deepstack_visual_indexes=(5, 11, 17))
  return ModelConfig(
      family="qwen3_vl", vision=vision,
      text=Qwen3TextConfig(vocab_size=151936, hidden_size=text_hidden,
                           intermediate_size=intermediate, num_layers=layers,
                           num_heads=heads, num_kv_heads=8, head_dim=128,
                           tie_word_embeddings=tie))


def qwen3_5_tiny(vocab_size: int = 2048) -> ModelConfig:
  """The Qwen3.5 counterpart of `tiny`, on the built-in tokenizer.

  Exercises what the family adds: three DeltaNet layers before one gated
  attention layer, 2 value heads per key head, rotary on a quarter of each
  64-channel head, a 4x4 position table, no DeepStack.
  """
  special = {t: i for i, t in enumerate(BUILTIN_SPECIAL_TOKENS)}
  return ModelConfig(
      family="qwen3_5",
      vision=Qwen3_5VisionConfig(depth=2, hidden_size=64, intermediate_size=128,
                                 num_heads=4, out_hidden_size=128,
                                 num_position_embeddings=16),
      text=Qwen3_5TextConfig(vocab_size=vocab_size, hidden_size=128,
                             intermediate_size=256, num_layers=4, num_heads=4,
                             num_kv_heads=2, head_dim=64, mrope_section=(3, 3, 2),
                             linear_num_key_heads=2, linear_num_value_heads=4,
                             linear_key_head_dim=32, linear_value_head_dim=32,
                             tie_word_embeddings=True),
      image_token_id=special["<|image_pad|>"],
      video_token_id=special["<|video_pad|>"],
      vision_start_token_id=special["<|vision_start|>"],
      vision_end_token_id=special["<|vision_end|>"],
  )


# Qwen3.5's three vision towers: (depth, hidden, MLP, heads).
_QWEN3_5_TOWERS = {"small": (12, 768, 3072, 12), "medium": (24, 1024, 4096, 16),
                   "large": (27, 1152, 4304, 16)}


def _qwen3_5(hidden: int, layers: int, heads: int, kv_heads: int,
             intermediate: int, value_heads: int, tie: bool,
             tower: str) -> ModelConfig:
  """A released Qwen3.5 shape: head_dim 256, 16 DeltaNet key heads of 128,
  one full-attention layer in four, vocab 248320 (reference section 10)."""
  depth, width, mlp, vision_heads = _QWEN3_5_TOWERS[tower]
  return ModelConfig(
      family="qwen3_5",
      vision=Qwen3_5VisionConfig(depth=depth, hidden_size=width,
                                 intermediate_size=mlp, num_heads=vision_heads,
                                 out_hidden_size=hidden),
      text=Qwen3_5TextConfig(hidden_size=hidden, num_layers=layers,
                             num_heads=heads, num_kv_heads=kv_heads,
                             intermediate_size=intermediate,
                             linear_num_value_heads=value_heads,
                             tie_word_embeddings=tie),
      image_token_id=248056, video_token_id=248057,
      vision_start_token_id=248053, vision_end_token_id=248054)


def _vision(out_hidden: int, **kw) -> VisionConfig:
  return VisionConfig(depth=32, hidden_size=1280, intermediate_size=3420,
                      num_heads=16, out_hidden_size=out_hidden,
                      fullatt_block_indexes=(7, 15, 23, 31), **kw)


PRESETS = {
    "tiny": tiny,
    "tiny_deep": lambda: tiny(num_layers=4),
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
    "qwen3_vl_tiny": qwen3_vl_tiny,
    # Published hub config.json shapes (2B from third-party copies only).
    "qwen3_vl_2b": lambda: _qwen3_vl(2048, 28, 16, 6144, True, False),
    "qwen3_vl_4b": lambda: _qwen3_vl(2560, 36, 32, 9728, True, False),
    "qwen3_vl_8b": lambda: _qwen3_vl(4096, 36, 32, 12288, False, True),
    "qwen3_vl_32b": lambda: _qwen3_vl(5120, 64, 64, 25600, False, True),
    "qwen3_5_tiny": qwen3_5_tiny,
    # Published shapes (9B from the hub config; others partly third-party).
    "qwen3_5_0_8b": lambda: _qwen3_5(1024, 24, 8, 2, 3584, 16, True, "small"),
    "qwen3_5_2b": lambda: _qwen3_5(2048, 24, 8, 2, 6144, 16, True, "medium"),
    "qwen3_5_4b": lambda: _qwen3_5(2560, 32, 16, 4, 9216, 32, True, "medium"),
    "qwen3_5_9b": lambda: _qwen3_5(4096, 32, 16, 4, 12288, 32, False, "large"),
    "qwen3_5_27b": lambda: _qwen3_5(5120, 64, 24, 4, 17408, 48, False, "large"),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  """Returns the named preset; unknown names list the valid ones."""
  if name not in PRESETS:
    raise ValueError(
        f"Unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
  cfg = PRESETS[name]()
  return dataclasses.replace(cfg, **overrides) if overrides else cfg
