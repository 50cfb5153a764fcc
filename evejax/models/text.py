"""Qwen2 decoder with sectioned M-RoPE, and its KV cache.

Two layouts of the same layers (one `DecoderBlock`):
  scanned   params['layers'] stacks every layer on a leading 'layers' axis and
            `nn.scan` runs it, so a 28-80 layer model compiles one layer body
            (training, scoring);
  unrolled  params['layers_0'], params['layers_1'], ... are separate arrays and
            a Python loop runs them (sampling). Inside scan, XLA copies each
            layer's weights out of the stack before its dots (a dynamic-slice:
            26% of a CPU decode step); separate arrays are read in place.
Every layer also returns its rotated keys and values: training lets XLA drop
them, prefill puts them into a `KVCache`; in decode each layer writes its own
into the cache.
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
  """Keys/values of every layer for a batch of left-padded sequences.

  One array per layer, so a decode step updates each in place and reads it
  without slicing a stack; laid out [B, kv_heads, S, head_dim] so attention's
  dots read it as it is (their batch dims lead), without a transpose.
  """
  k: tuple[jax.Array, ...]  # per layer [B, kv_heads, S, head_dim], rotated keys
  v: tuple[jax.Array, ...]  # per layer [B, kv_heads, S, head_dim]
  mask: jax.Array      # int32 [B, S]; 1 for filled real slots
  index: jax.Array     # int32 []; next slot to write (shared by all rows)
  position: jax.Array  # int32 [B]; next M-RoPE text position per row

  @property
  def size(self) -> int:
    return self.k[0].shape[2]


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


def write_cache(cache: jax.Array, new: jax.Array, index) -> jax.Array:
  """Puts new [B, T, K, hd] into a layer's cache [B, K, S, hd] at slot index."""
  return jax.lax.dynamic_update_slice(
      cache, jnp.swapaxes(new, 1, 2).astype(cache.dtype), (0, 0, index, 0))


class DecoderBlock(nn.Module):
  """x + attn(input_norm(x)); x + mlp(post_attn_norm(x)).

  Without a cache, x attends to itself under `mask` [B, T, T] and the block
  returns (x, (k, v)) of x's tokens. With `cache` = this layer's (k, v), each
  [B, K, S, hd], x's keys/values are written at slot `index` first and x
  attends to the whole cache under `mask` [B, T, S]; the block returns (x,
  updated cache). Writing before reading lets XLA update the cache in place:
  reading the old cache and then writing gives it no order between the two,
  and it copies every layer's cache every step.
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
    if cache is not None:
      k, v = write_cache(cache[0], k, index), write_cache(cache[1], v, index)
      # Swapped views, not copies: XLA folds them into the dots' operands.
      o = layers.attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                           mask)
    else:
      o = layers.attention(q, k, v, mask)
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
  """Embedding, decoder layers, final norm and (tied) lm head.

  `scan_layers` picks the params layout (see the module docstring);
  `unstack_layers` turns scanned params into unrolled ones.
  """
  config: TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False
  scan_layers: bool = True

  def setup(self):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = Embed(c.vocab_size, c.hidden_size, **kw)
    block = DecoderBlock
    if self.remat:
      block = nn.remat(block, prevent_cse=False)
    if self.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=c.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(c, **kw)
    else:  # Flax names a list's modules layers_0, layers_1, ...
      self.layers = [block(c, **kw) for _ in range(c.num_layers)]
    self.norm = layers.RMSNorm(c.rms_norm_eps, **kw)
    if not c.tie_word_embeddings:
      self.lm_head = layers.Linear((c.hidden_size,), (c.vocab_size,),
                                   ("embed",), ("vocab",),
                                   out_dtype=jnp.float32, **kw)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    return self.embed(tokens)

  def decode(self, x, positions, mask, cache=None, index=None):
    """Runs all layers on embeddings x [B, T, D].

    Args:
      x: [B, T, D] input embeddings.
      positions: int [3, B, T] M-RoPE positions of x.
      mask: bool [B, T, T], which of x's tokens each token sees; with
        `cache`, [B, T, S], which cache slots (x's own included) it sees.
      cache: optional per-layer (k, v), each [B, kv_heads, S, hd]; x's
        keys/values are written into them at slot `index` (int32 []).

    Returns:
      (final-normed hidden [B, T, D], per layer (k, v): x's, each
      [B, T, kv_heads, hd], or with `cache` the updated cache).
    """
    cos, sin = mrope_cos_sin(positions, self.config)
    if self.scan_layers:
      if cache is not None:  # A copy per call: the fast path is unrolled.
        cache = tuple(jnp.stack(t) for t in zip(*cache))
      x, (k, v) = self.layers(x, cache, cos, sin, mask, index)
      kv = [(k[i], v[i]) for i in range(self.config.num_layers)]
    else:
      kv = []
      for i, layer in enumerate(self.layers):
        x, kv_i = layer(x, None if cache is None else cache[i], cos, sin,
                        mask, index)
        kv.append(kv_i)
    return self.norm(x), kv

  def unembed(self, h: jax.Array) -> jax.Array:
    """float32 logits [..., V] from hidden [..., D]."""
    if self.config.tie_word_embeddings:
      return self.embed.attend(h)
    return self.lm_head(h)


def unstack_layers(text_params: dict, num_layers: int, take_layer) -> dict:
  """Scanned text params (or any tree shaped like them) -> unrolled ones.

  `take_layer(stacked, i)` gives layer i's tree from the stacked 'layers'
  tree (for params: index every leaf; for axis names: drop 'layers').
  """
  out = {k: v for k, v in text_params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = take_layer(text_params["layers"], i)
  return out
