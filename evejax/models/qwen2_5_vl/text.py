"""Qwen2.5-VL's text model: the Qwen2 decoder with sectioned M-RoPE.

Per layer: h += o(attn(RMSNorm(h))), h += SwiGLU(RMSNorm(h)); q/k/v carry
biases, o and the MLP do not; head_dim = hidden / heads (128 in every released
size). M-RoPE cuts the head_dim/2 rotary frequencies into contiguous sections
(16, 24, 24): the first driven by the temporal position, the next by the
height, the last by the width (rope theta 1e6). The layer stack, cache and
embedding are `evejax.models.decoder`'s.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evejax.models import decoder
from evejax.models import layers
from evejax.models.presets import TextConfig


def mrope_cos_sin(positions: jax.Array, cfg: TextConfig
                  ) -> tuple[jax.Array, jax.Array]:
  """Sectioned M-RoPE tables [B, T, head_dim] from positions [3, B, T], fp32.

  The head_dim/2 frequencies are cut into chunks of `mrope_section` sizes;
  chunk i is driven by position axis i % 3 (temporal, height, width).
  """
  half = cfg.head_dim // 2
  if sum(cfg.mrope_section) != half:
    raise ValueError(
        f"TextConfig.mrope_section {cfg.mrope_section} sums to "
        f"{sum(cfg.mrope_section)} but must sum to head_dim/2 = {half}.")
  inv = layers.inv_frequencies(cfg.head_dim, cfg.rope_theta)
  freqs = positions.astype(jnp.float32)[..., None] * inv  # [3, B, T, half]
  chunks, start = [], 0
  for i, n in enumerate(cfg.mrope_section):
    chunks.append(freqs[i % 3, ..., start:start + n])
    start += n
  ang = jnp.concatenate(chunks, axis=-1)
  ang = jnp.concatenate([ang, ang], axis=-1)
  return jnp.cos(ang), jnp.sin(ang)


class DecoderBlock(nn.Module):
  """x + attn(input_norm(x)); x + mlp(post_attn_norm(x)).

  Returns (x, (k, v)); with `cache` the layer's updated cache (see
  `decoder.attend` for the masks of both cases).
  """
  config: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cache, cos, sin, mask, index=None):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d, hd = c.hidden_size, c.head_dim
    h = layers.RMSNorm(c.rms_norm_eps, **kw, name="input_norm")(x)
    q = layers.Linear((d,), (c.num_heads, hd), ("embed",), ("heads", "head_dim"),
                      use_bias=True, **kw, name="q")(h)
    k = layers.Linear((d,), (c.num_kv_heads, hd), ("embed",),
                      ("kv_heads", "head_dim"), use_bias=True, **kw, name="k")(h)
    v = layers.Linear((d,), (c.num_kv_heads, hd), ("embed",),
                      ("kv_heads", "head_dim"), use_bias=True, **kw, name="v")(h)
    q = layers.apply_rotary(q, cos, sin)
    k = layers.apply_rotary(k, cos, sin)
    o, kv = decoder.attend(q, k, v, mask, cache, index)
    x = x + layers.Linear((c.num_heads, hd), (d,), ("heads", "head_dim"),
                          ("embed",), **kw, name="o")(o)
    h = layers.RMSNorm(c.rms_norm_eps, **kw, name="post_attn_norm")(x)
    x = x + layers.SwiGLU(d, c.intermediate_size, "embed", "mlp",
                          use_bias=False, **kw, name="mlp")(h)
    return x, kv


class TextModel(decoder.TextModelBase):
  """Embedding, Qwen2 decoder layers, final norm and (tied) lm head."""
  block = DecoderBlock
  # (cache, cos, sin, mask, index) after x.
  scan_in_axes = (0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast)

  def decode(self, x, positions, mask, cache=None, index=None):
    """Runs all layers on embeddings x [B, T, D].

    Args:
      x: [B, T, D] input embeddings.
      positions: int [3, B, T] M-RoPE positions of x.
      mask: bool [B, T, T] or `attention.Segments`, which of x's tokens
        each token sees; with `cache`, bool [B, T, S], which cache slots
        (x's own included) it sees.
      cache: optional per-layer (k, v), each [B, kv_heads, S, hd]; x's
        keys/values are written into them at slot `index` (int32 []).

    Returns:
      (final-normed hidden [B, T, D], per layer (k, v): x's, each
      [B, T, kv_heads, hd], or with `cache` the updated cache).
    """
    cos, sin = mrope_cos_sin(positions, self.config)
    x, kv = self.run_layers(x, cache, cos, sin, mask, index)
    return self.norm(x), kv
