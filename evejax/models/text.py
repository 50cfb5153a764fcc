"""Qwen2 decoder with sectioned M-RoPE, and its KV cache.

Layers are stacked and scanned (params carry a leading 'layers' axis) so a
28-80 layer model compiles one layer body. Every layer also returns its
rotated keys and values; callers that do not use them (training) let XLA drop
them, prefill/decode write them into a `KVCache`.
"""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from evejax.models import layers
from evejax.models.presets import TextConfig


@flax.struct.dataclass
class KVCache:
  """Keys/values of every layer for a batch of left-padded sequences."""
  k: jax.Array         # [layers, B, S, kv_heads, head_dim], rotated keys
  v: jax.Array         # [layers, B, S, kv_heads, head_dim]
  mask: jax.Array      # int32 [B, S]; 1 for filled real slots
  index: jax.Array     # int32 []; next slot to write (shared by all rows)
  position: jax.Array  # int32 [B]; next M-RoPE text position per row

  @property
  def size(self) -> int:
    return self.k.shape[2]


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
  """x + attn(input_norm(x)); x + mlp(post_attn_norm(x)). Returns (x, (k, v))."""
  config: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, kv_prefix, cos, sin, mask, prefix_mask):
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
    prefix = None
    if kv_prefix is not None:
      prefix = (kv_prefix[0], kv_prefix[1], prefix_mask)
    o = layers.attention(q, k, v, mask, prefix=prefix)
    x = x + layers.Linear((c.num_heads, hd), (d,), ("heads", "head_dim"),
                          ("embed",), **kw, name="o")(o)
    h = layers.RMSNorm(c.rms_norm_eps, **kw, name="post_attn_norm")(x)
    x = x + layers.SwiGLU(d, c.intermediate_size, "embed", "mlp",
                          use_bias=False, **kw, name="mlp")(h)
    return x, (k, v)


class Embed(nn.Module):
  """Token embedding; `attend` is the tied output projection."""
  vocab_size: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = layers.param(self, "embedding", layers.normal_init(0.02),
                                  (self.vocab_size, self.features),
                                  ("vocab", "embed"), self.param_dtype)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    # mode='clip': padding may hold any id; the default 'fill' would give NaN.
    return jnp.take(self.embedding, tokens, axis=0, mode="clip").astype(
        self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype),
                      self.embedding.astype(self.dtype),
                      preferred_element_type=jnp.float32)


class TextModel(nn.Module):
  """Embedding, scanned decoder layers, final norm and (tied) lm head."""
  config: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def setup(self):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = Embed(c.vocab_size, c.hidden_size, **kw)
    block = DecoderBlock
    if self.remat:
      block = nn.remat(block, prevent_cse=False)
    self.layers = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=c.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})(c, **kw)
    self.norm = layers.RMSNorm(c.rms_norm_eps, **kw)
    if not c.tie_word_embeddings:
      self.lm_head = layers.Linear((c.hidden_size,), (c.vocab_size,),
                                   ("embed",), ("vocab",),
                                   out_dtype=jnp.float32, **kw)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    return self.embed(tokens)

  def decode(self, x, positions, mask, kv_prefix=None, prefix_mask=None):
    """Runs all layers on embeddings x [B, T, D].

    Args:
      x: [B, T, D] input embeddings.
      positions: int [3, B, T] M-RoPE positions of x.
      mask: bool [B, T, T]; which of the new tokens each new token sees.
      kv_prefix: optional cached (k, v), each [layers, B, S, kv_heads, hd].
      prefix_mask: bool [B, T, S]; which cached slots each new token sees.

    Returns:
      (final-normed hidden [B, T, D], (k, v) of x, each [layers, B, T, K, hd]).
    """
    cos, sin = mrope_cos_sin(positions, self.config)
    x, kv = self.layers(x, kv_prefix, cos, sin, mask, prefix_mask)
    return self.norm(x), kv

  def unembed(self, h: jax.Array) -> jax.Array:
    """float32 logits [..., V] from hidden [..., D]."""
    if self.config.tie_word_embeddings:
      return self.embed.attend(h)
    return self.lm_head(h)
