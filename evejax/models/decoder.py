"""What every family's text decoder shares: KV cache, embedding, the layer stack.

A family's `TextModel` subclasses `TextModelBase`, names its decoder block and
the block's scan axes, and writes its own `decode` (rotary tables, what each
layer gets). The layers have two layouts, one block definition:
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

from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from evejax.models import attention
from evejax.models import layers


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


def write_cache(cache: jax.Array, new: jax.Array, index) -> jax.Array:
  """Puts new [B, T, K, hd] into a layer's cache [B, K, S, hd] at slot index."""
  return jax.lax.dynamic_update_slice(
      cache, jnp.swapaxes(new, 1, 2).astype(cache.dtype), (0, 0, index, 0))


def attend(q, k, v, mask, cache, index):
  """A decoder layer's attention, with or without its cache.

  Without a cache, q attends to k/v [B, T, K, hd] under `mask` (a dense bool
  [B, T, T] or `attention.Segments`, which picks a kernel) and (k, v) is
  returned as the layer's keys/values. With `cache` = this layer's
  (k, v), each [B, K, S, hd], the new k/v are written at slot `index` first
  and q attends to the whole cache under `mask` [B, T, S]; the updated cache
  is returned. Writing before reading lets XLA update the cache in place:
  reading the old cache and then writing gives it no order between the two,
  and it copies every layer's cache every step.
  """
  if cache is None:
    return attention.attend(q, k, v, mask), (k, v)
  k, v = write_cache(cache[0], k, index), write_cache(cache[1], v, index)
  # Swapped views, not copies: XLA folds them into the dots' operands.
  o = layers.attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)
  return o, (k, v)


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


class TextModelBase(nn.Module):
  """Embedding, decoder layers, final norm and (tied) lm head.

  Subclasses set `block` (the decoder layer module, or a block of several
  layers with `num_blocks`) and `scan_in_axes` (its arguments after x, for
  `nn.scan`), and define `decode`. `scan_layers` picks
  the params layout (module docstring); `unstack_layers` turns scanned params
  into unrolled ones.
  """
  config: Any
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False
  scan_layers: bool = True

  block: ClassVar[type]
  scan_in_axes: ClassVar[tuple]
  # The block takes `remat` and rematerialises its own parts (a block of
  # several layers), instead of being rematerialised whole.
  block_remats_itself: ClassVar[bool] = False
  final_norm: ClassVar[type] = layers.RMSNorm

  @classmethod
  def num_blocks(cls, config) -> int:
    """Blocks in the stack: one per layer, unless a block holds several."""
    return config.num_layers

  def setup(self):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = Embed(c.vocab_size, c.hidden_size, **kw)
    block = self.block
    if self.block_remats_itself:
      kw["remat"] = self.remat
    elif self.remat:
      block = nn.remat(block, prevent_cse=False)
    n = self.num_blocks(c)
    if self.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=self.scan_in_axes, length=n,
          metadata_params={nn.PARTITION_NAME: "layers"})(c, **kw)
    else:  # Flax names a list's modules layers_0, layers_1, ...
      self.layers = [block(c, **kw) for _ in range(n)]
    kw.pop("remat", None)
    self.norm = self.final_norm(c.rms_norm_eps, **kw)
    if not c.tie_word_embeddings:
      self.lm_head = layers.Linear((c.hidden_size,), (c.vocab_size,),
                                   ("embed",), ("vocab",),
                                   out_dtype=jnp.float32, **kw)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    return self.embed(tokens)

  def unembed(self, h: jax.Array) -> jax.Array:
    """float32 logits [..., V] from hidden [..., D]."""
    if self.config.tie_word_embeddings:
      return self.embed.attend(h)
    return self.lm_head(h)

  def run_layers(self, x, cache, *args, layer_index: bool = False):
    """x through every block: `block(x, cache_i, [i], *args)`.

    With `layer_index`, each block also gets its index right after its cache
    (an int when unrolled, a traced int32 when scanned). Returns (x, per
    block its cache: (k, v) of x, or with `cache` the updated cache; any
    pytree a block returns).
    """
    n = self.num_blocks(self.config)
    index = (lambda i: (i,)) if layer_index else (lambda i: ())
    if self.scan_layers:
      if cache is not None:  # A copy per call: the fast path is unrolled.
        cache = jax.tree.map(lambda *xs: jnp.stack(xs), *cache)
      x, out = self.layers(x, cache, *index(jnp.arange(n)), *args)
      return x, [jax.tree.map(lambda t, i=i: t[i], out) for i in range(n)]
    kv = []
    for i, layer in enumerate(self.layers):
      x, kv_i = layer(x, None if cache is None else cache[i], *index(i), *args)
      kv.append(kv_i)
    return x, kv


def unstack_layers(text_params: dict, num_layers: int, take_layer) -> dict:
  """Scanned text params (or any tree shaped like them) -> unrolled ones.

  `take_layer(stacked, i)` gives layer i's tree from the stacked 'layers'
  tree (for params: index every leaf; for axis names: drop 'layers').
  """
  out = {k: v for k, v in text_params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = take_layer(text_params["layers"], i)
  return out
