"""Qwen3-VL's text model: the Qwen3 decoder, interleaved M-RoPE and DeepStack.

Per layer (8B: hidden 4096, 32 query heads on 8 KV heads, head_dim 128):
  h += o(attn(RMSNorm(h))), h += SwiGLU(RMSNorm(h)), no bias anywhere;
  q and k get a per-head RMSNorm over head_dim (weights [128]) right after
  their projections and *before* rotary; v does not. head_dim is explicit, so
  heads x head_dim may differ from hidden (4B: 32 x 128 = 4096 vs 2560).
Interleaved M-RoPE (theta 5e6, sections (24, 20, 20) over the 64 frequencies):
  frequency j rotates by the height position if j % 3 == 1 and j < 3 * 20,
  by the width position if j % 3 == 2 and j < 3 * 20, else by the temporal
  one (j = 0, 3, ..., 57 and 60..63); the tables are then doubled over the
  head (rotate-half pairs j and j + 64). For text all three positions are
  equal and this is plain RoPE.
DeepStack: after decoder layer k (both residual adds) for k < n, the k-th
  DeepStack vision feature is added to the stream at the image tokens (the
  same slots the main features fill). Nothing is added at layer inputs or
  after the final norm; decode steps (text tokens) add nothing.
The layer stack, cache and embedding are `evejax.models.decoder`'s.
"""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from evejax.models import decoder
from evejax.models import layers
from evejax.models.presets import Qwen3TextConfig


def mrope_axes(cfg: Qwen3TextConfig) -> np.ndarray:
  """int [head_dim/2]: which position (0 T, 1 H, 2 W) drives each frequency."""
  return layers.interleaved_mrope_axes(cfg.head_dim, cfg.mrope_section)


def mrope_cos_sin(positions: jax.Array, cfg: Qwen3TextConfig
                  ) -> tuple[jax.Array, jax.Array]:
  """Interleaved M-RoPE tables [B, T, head_dim] from positions [3, B, T], fp32."""
  return layers.interleaved_mrope_cos_sin(positions, cfg.head_dim,
                                          cfg.rope_theta, cfg.mrope_section)


@flax.struct.dataclass
class DeepStack:
  """The DeepStack features of a batch and where they go."""
  features: jax.Array  # [n, B, M, D]; feature k is added after decoder layer k
  is_image: jax.Array  # bool [B, T]; the real image tokens
  slot: jax.Array      # int32 [B, T]; the merged row each image token takes

  def add_after(self, x: jax.Array, layer) -> jax.Array:
    """x plus feature `layer` at the image tokens (unchanged if layer >= n).

    `layer` is an int (unrolled layers) or a traced int32 (scanned ones).
    """
    n = self.features.shape[0]
    if isinstance(layer, int):
      if layer >= n:
        return x
      feature, use = self.features[layer], self.is_image
    else:
      feature = jax.lax.dynamic_index_in_dim(
          self.features, jnp.minimum(layer, n - 1), keepdims=False)
      use = self.is_image & (layer < n)
    picked = jnp.take_along_axis(feature, self.slot[..., None], axis=1)
    return x + jnp.where(use[..., None], picked, 0).astype(x.dtype)


class DecoderBlock(nn.Module):
  """x + attn(input_norm(x)); x + mlp(post_attn_norm(x)); then DeepStack.

  Returns (x, (k, v)); with `cache` the layer's updated cache (see
  `decoder.attend` for the masks of both cases). `layer` is this layer's
  index, which DeepStack needs.
  """
  config: Qwen3TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cache, layer, cos, sin, mask, index=None,
               deepstack: DeepStack | None = None):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d, hd = c.hidden_size, c.head_dim
    h = layers.RMSNorm(c.rms_norm_eps, **kw, name="input_norm")(x)
    q = layers.Linear((d,), (c.num_heads, hd), ("embed",), ("heads", "head_dim"),
                      **kw, name="q")(h)
    k = layers.Linear((d,), (c.num_kv_heads, hd), ("embed",),
                      ("kv_heads", "head_dim"), **kw, name="k")(h)
    v = layers.Linear((d,), (c.num_kv_heads, hd), ("embed",),
                      ("kv_heads", "head_dim"), **kw, name="v")(h)
    q = layers.RMSNorm(c.rms_norm_eps, **kw, name="q_norm")(q)
    k = layers.RMSNorm(c.rms_norm_eps, **kw, name="k_norm")(k)
    q = layers.apply_rotary(q, cos, sin)
    k = layers.apply_rotary(k, cos, sin)
    o, kv = decoder.attend(q, k, v, mask, cache, index)
    x = x + layers.Linear((c.num_heads, hd), (d,), ("heads", "head_dim"),
                          ("embed",), **kw, name="o")(o)
    h = layers.RMSNorm(c.rms_norm_eps, **kw, name="post_attn_norm")(x)
    # A mixture-of-experts MLP would take this module's place.
    x = x + layers.SwiGLU(d, c.intermediate_size, "embed", "mlp",
                          use_bias=False, **kw, name="mlp")(h)
    if deepstack is not None:
      x = deepstack.add_after(x, layer)
    return x, kv


class TextModel(decoder.TextModelBase):
  """Embedding, Qwen3 decoder layers, final norm and (tied) lm head."""
  block = DecoderBlock
  # (cache, layer, cos, sin, mask, index, deepstack) after x.
  scan_in_axes = (0, 0, nn.broadcast, nn.broadcast, nn.broadcast,
                  nn.broadcast, nn.broadcast)

  def decode(self, x, positions, mask, cache=None, index=None,
             deepstack: DeepStack | None = None):
    """Runs all layers on embeddings x [B, T, D].

    Args:
      x: [B, T, D] input embeddings.
      positions: int [3, B, T] M-RoPE positions of x.
      mask: bool [B, T, T] or `attention.Segments`, which of x's tokens
        each token sees; with `cache`, bool [B, T, S], which cache slots
        (x's own included) it sees.
      cache: optional per-layer (k, v), each [B, kv_heads, S, hd]; x's
        keys/values are written into them at slot `index` (int32 []).
      deepstack: the images' DeepStack features, or None (text only).

    Returns:
      (final-normed hidden [B, T, D], per layer (k, v): x's, each
      [B, T, kv_heads, hd], or with `cache` the updated cache).
    """
    cos, sin = mrope_cos_sin(positions, self.config)
    x, kv = self.run_layers(x, cache, cos, sin, mask, index, deepstack,
                            layer_index=True)
    return self.norm(x), kv
