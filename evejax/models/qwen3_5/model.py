"""The Qwen3.5 module: Qwen3-VL's vision tower without DeepStack + the hybrid
decoder, with its own cache (`cache.HybridCache`).

Scoring, prefill and decode are `vlm_base.VLMBase`'s, except that the
decoder also gets the token mask (DeltaNet layers zero pad tokens) and the
cache holds, besides KV for the attention layers, each DeltaNet layer's conv
window and recurrent state: prefill stores the state after the prompt (left
padding is exact: pads write nothing), and a decode step advances it by one
token, reading a fixed-size state instead of a growing cache.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from evejax.models import vlm_base
from evejax.models.inputs import ModelInputs
from evejax.models.qwen3_5 import cache as cache_lib
from evejax.models.qwen3_5.text import TextModel
from evejax.models.qwen3_vl.model import Qwen3VL
from evejax.models.qwen3_vl.vision import VisionTower


def _layers_of(blocks: list) -> list:
  """Per block, per layer caches -> per layer, in layer order."""
  return [member for block in blocks for member in block]


def _blocks_of(per_layer: list, period: int) -> list:
  return [tuple(per_layer[g:g + period]) for g in range(0, len(per_layer), period)]


class Qwen3_5(Qwen3VL):
  """Image features replace the image tokens' embeddings (no DeepStack)."""
  vision_tower = VisionTower
  text_model = TextModel

  init_cache = staticmethod(cache_lib.init_cache)
  cache_axes = staticmethod(cache_lib.cache_axes)

  def run_decoder(self, x, visual, positions, mask, cache=None, index=None,
                  token_mask=None):
    del visual  # no DeepStack features
    return self.text.decode(x, positions, mask, token_mask, cache, index)

  def hidden(self, inputs: ModelInputs) -> jax.Array:
    x, visual = self.embed(inputs)
    h, _ = self.run_decoder(x, visual, inputs.positions,
                            self.text_mask(inputs.mask),
                            token_mask=inputs.mask)
    return h

  def prefill(self, inputs: ModelInputs, cache_size: int
              ) -> tuple[jax.Array, cache_lib.HybridCache]:
    t = inputs.tokens.shape[1]
    if t > cache_size:
      raise ValueError(f"prefill: prompt length {t} exceeds cache_size "
                       f"{cache_size}; raise cache_size.")
    c = self.config
    x, visual = self.embed(inputs)
    h, blocks = self.run_decoder(x, visual, inputs.positions,
                                 self.text_mask(inputs.mask),
                                 token_mask=inputs.mask)
    pad = functools.partial(vlm_base.kv_slots, size=cache_size,
                            dtype=jnp.dtype(c.dtype))
    full = set(c.text.full_layers)
    per_layer = [(pad(a), pad(b)) if i in full else (a, b)
                 for i, (a, b) in enumerate(_layers_of(blocks))]
    cache = cache_lib.from_layers(
        c, per_layer, **vlm_base.prompt_bookkeeping(inputs, cache_size))
    return self.unembed(h[:, -1]), cache

  def decode_step(self, tokens: jax.Array, cache: cache_lib.HybridCache
                  ) -> tuple[jax.Array, cache_lib.HybridCache]:
    c = self.config
    x = self.text.embed_tokens(tokens[:, None])
    positions, mask, i = vlm_base.decode_bookkeeping(tokens, cache)
    blocks = _blocks_of(cache.per_layer(c), c.text.period)
    h, blocks = self.run_decoder(x, None, positions, (mask != 0)[:, None, :],
                                 cache=blocks, index=i)
    new = cache.with_layers(c, _layers_of(blocks), mask=mask,
                            index=i + 1, position=cache.position + 1)
    return self.unembed(h[:, 0]), new

