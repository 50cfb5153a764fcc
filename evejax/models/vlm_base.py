"""What every family's VLM module shares: scoring, prefill and decode around a
family's own embedding and decoder.

A family's module subclasses `VLMBase`, names its vision tower and text model
(`vision_tower`, `text_model`) and defines two methods:
  embed(inputs) -> (x, visual)   token embeddings with image features in the
                                 image-token slots, and whatever else the
                                 decoder needs from the images (None when
                                 nothing; Qwen3-VL: its DeepStack features);
  run_decoder(x, visual, positions, mask, cache=None, index=None)
                                 -> (final-normed hidden, per-layer (k, v)).
Everything else (hidden, unembed, forward, prefill, decode_step, the cache's
layout) is here, the same for every family whose cache is one `KVCache`
(Qwen3.5 overrides the cache: `qwen3_5.model`); `evejax.models.vlm` is the
functional face of it.

Image features are scattered on device: the k-th `image_token_id` token
(among real tokens) of an example receives merged vision feature k of that
example. Prompts for `prefill` are LEFT-padded so all rows share one cache
write index.
"""
from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from evejax.models import attention
from evejax.models.decoder import KVCache
from evejax.models.inputs import ModelInputs
from evejax.models.presets import ModelConfig


def causal_mask(mask: jax.Array) -> jax.Array:
  """bool [B, T, T]: query i sees real key j <= i (any padding side)."""
  return attention.causal_text(mask, "xla")


def image_slots(inputs: ModelInputs, image_token_id: int, num_features: int
                ) -> tuple[jax.Array, jax.Array]:
  """(is_image bool [B, T], slot int32 [B, T]): real image tokens and the
  merged feature (row of the example's [M, D] features) each one receives."""
  is_image = (inputs.tokens == image_token_id) & (inputs.mask != 0)
  slot = jnp.cumsum(is_image.astype(jnp.int32), axis=1) - 1
  return is_image, jnp.clip(slot, 0, num_features - 1)


def place_features(x: jax.Array, features: jax.Array, is_image: jax.Array,
                   slot: jax.Array) -> jax.Array:
  """x [B, T, D] with features [B, M, D] at the image tokens (see image_slots)."""
  picked = jnp.take_along_axis(features, slot[..., None], axis=1)
  return jnp.where(is_image[..., None], picked.astype(x.dtype), x)


def kv_slots(x: jax.Array, size: int, dtype) -> jax.Array:
  """A prompt's keys or values [B, T, K, hd] as cache [B, K, size, hd], the
  slots after the prompt empty."""
  t = x.shape[1]
  return jnp.pad(jnp.swapaxes(x, 1, 2).astype(dtype),
                 ((0, 0), (0, 0), (0, size - t), (0, 0)))


def prompt_bookkeeping(inputs: ModelInputs, cache_size: int) -> dict:
  """A prefilled cache's mask, index and position (KVCache field names)."""
  t = inputs.tokens.shape[1]
  real = inputs.mask != 0
  position = jnp.max(jnp.where(real[None], inputs.positions, -1),
                     axis=(0, 2)) + 1
  return dict(
      mask=jnp.pad(real.astype(jnp.int32), ((0, 0), (0, cache_size - t))),
      index=jnp.asarray(t, jnp.int32), position=position.astype(jnp.int32))


def decode_bookkeeping(tokens: jax.Array, cache) -> tuple:
  """(positions [3, B, 1], the cache mask with slot `index` filled, index)
  of one decode step."""
  b = tokens.shape[0]
  positions = jnp.broadcast_to(cache.position[None, :, None], (3, b, 1))
  i = cache.index
  mask = jax.lax.dynamic_update_slice(
      cache.mask, jnp.ones((b, 1), cache.mask.dtype), (0, i))
  return positions, mask, i


class VLMBase(nn.Module):
  """Vision tower + text decoder; methods are `evejax.models.vlm`'s entry points."""
  config: ModelConfig
  param_dtype: jnp.dtype = jnp.float32
  scan_layers: bool = True  # params layout; see evejax.models.decoder

  vision_tower: ClassVar[type]
  text_model: ClassVar[type]

  def setup(self):
    c = self.config
    if c.vision.out_hidden_size != c.text.hidden_size:
      raise ValueError(
          f"vision.out_hidden_size ({c.vision.out_hidden_size}) must equal "
          f"text.hidden_size ({c.text.hidden_size}); fix the ModelConfig.")
    dtype = jnp.dtype(c.dtype)
    self.vision = self.vision_tower(c.vision, dtype, self.param_dtype, c.remat,
                                    attention=self.attention)
    self.text = self.text_model(c.text, dtype, self.param_dtype, c.remat,
                                self.scan_layers)

  @classmethod
  def init_cache(cls, config: ModelConfig, batch: int, size: int,
                 dtype=None) -> KVCache:
    """An empty cache of `size` slots (dtype defaults to config.dtype)."""
    t = config.text
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch, t.num_kv_heads, size, t.head_dim)
    empty = tuple(jnp.zeros(shape, dtype) for _ in range(t.num_layers))
    return KVCache(k=empty, v=empty,
                   mask=jnp.zeros((batch, size), jnp.int32),
                   index=jnp.zeros((), jnp.int32),
                   position=jnp.zeros((batch,), jnp.int32))

  @classmethod
  def cache_axes(cls, config: ModelConfig) -> KVCache:
    """The cache's pytree of logical axis tuples."""
    kv = (("batch", "kv_heads", "length", "head_dim"),) * config.text.num_layers
    return KVCache(k=kv, v=kv, mask=("batch", "length"), index=(),
                   position=("batch",))

  @property
  def attention(self) -> str:
    """The attention implementation on this platform (`attention.resolve`)."""
    return attention.resolve(self.config.attention)

  def text_mask(self, mask: jax.Array):
    """Who sees whom in self-attention over tokens with padding `mask`."""
    return attention.causal_text(mask, self.attention)

  def embed(self, inputs: ModelInputs):
    raise NotImplementedError

  def run_decoder(self, x, visual, positions, mask, cache=None, index=None):
    raise NotImplementedError

  def hidden(self, inputs: ModelInputs) -> jax.Array:
    x, visual = self.embed(inputs)
    h, _ = self.run_decoder(x, visual, inputs.positions,
                            self.text_mask(inputs.mask))
    return h

  def unembed(self, h: jax.Array) -> jax.Array:
    return self.text.unembed(h)

  def forward(self, inputs: ModelInputs) -> jax.Array:
    return self.unembed(self.hidden(inputs))

  def prefill(self, inputs: ModelInputs, cache_size: int
              ) -> tuple[jax.Array, KVCache]:
    b, t = inputs.tokens.shape
    if t > cache_size:
      raise ValueError(f"prefill: prompt length {t} exceeds cache_size "
                       f"{cache_size}; raise cache_size.")
    x, visual = self.embed(inputs)
    h, kv = self.run_decoder(x, visual, inputs.positions,
                             self.text_mask(inputs.mask))
    last_logits = self.unembed(h[:, -1])
    pad = functools.partial(kv_slots, size=cache_size,
                            dtype=jnp.dtype(self.config.dtype))
    cache = KVCache(
        k=tuple(pad(k) for k, _ in kv), v=tuple(pad(v) for _, v in kv),
        **prompt_bookkeeping(inputs, cache_size))
    return last_logits, cache

  def decode_step(self, tokens: jax.Array, cache: KVCache
                  ) -> tuple[jax.Array, KVCache]:
    x = self.text.embed_tokens(tokens[:, None])
    positions, mask, i = decode_bookkeeping(tokens, cache)
    h, kv = self.run_decoder(x, None, positions, (mask != 0)[:, None, :],
                             cache=list(zip(cache.k, cache.v)), index=i)
    return self.unembed(h[:, 0]), cache.replace(
        k=tuple(k for k, _ in kv), v=tuple(v for _, v in kv), mask=mask,
        index=i + 1, position=cache.position + 1)
