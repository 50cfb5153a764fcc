"""The Qwen2.5-VL model, applied functionally.

    params = init_params(config, rng)                  # plain nested dict
    logits = forward(params, config, inputs)           # float32 [B, T, V]
    last, cache = prefill(params, config, prompts, cache_size=S)
    logits, cache = decode_step(params, config, tokens, cache)

`config` is a hashable `ModelConfig`: pass it as a static argument of jax.jit.
Image features are scattered on device: the k-th `image_token_id` token (among
real tokens) of an example receives merged vision feature k of that example.
Prompts for `prefill` are LEFT-padded so all rows share one cache write index.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evejax.models.inputs import ModelInputs
from evejax.models.presets import ModelConfig
from evejax.models.text import KVCache, TextModel
from evejax.models.vision import VisionTower

__all__ = [
    "KVCache", "VLM", "init_params", "param_axes", "forward", "hidden_states",
    "unembed", "init_cache", "cache_axes", "prefill", "decode_step",
    "causal_mask",
]


def causal_mask(mask: jax.Array) -> jax.Array:
  """bool [B, T, T]: query i sees real key j <= i (any padding side)."""
  t = mask.shape[1]
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))
  return causal[None] & (mask != 0)[:, None, :]


class VLM(nn.Module):
  """Vision tower + Qwen2 decoder; methods are the entry points below."""
  config: ModelConfig
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    c = self.config
    if c.vision.out_hidden_size != c.text.hidden_size:
      raise ValueError(
          f"vision.out_hidden_size ({c.vision.out_hidden_size}) must equal "
          f"text.hidden_size ({c.text.hidden_size}); fix the ModelConfig.")
    dtype = jnp.dtype(c.dtype)
    self.vision = VisionTower(c.vision, dtype, self.param_dtype, c.remat)
    self.text = TextModel(c.text, dtype, self.param_dtype, c.remat)

  def embed(self, inputs: ModelInputs) -> jax.Array:
    """Token embeddings with image features in place of image tokens."""
    x = self.text.embed_tokens(inputs.tokens)
    if inputs.num_patches == 0:
      return x
    feats = self.vision(inputs.patches, inputs.patch_coords,
                        inputs.patch_image, inputs.patch_window)
    is_image = (inputs.tokens == self.config.image_token_id) & (inputs.mask != 0)
    k = jnp.cumsum(is_image.astype(jnp.int32), axis=1) - 1
    k = jnp.clip(k, 0, feats.shape[1] - 1)
    picked = jnp.take_along_axis(feats, k[..., None], axis=1)
    return jnp.where(is_image[..., None], picked.astype(x.dtype), x)

  def hidden(self, inputs: ModelInputs) -> jax.Array:
    h, _ = self.text.decode(self.embed(inputs), inputs.positions,
                            causal_mask(inputs.mask))
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
    h, (k, v) = self.text.decode(self.embed(inputs), inputs.positions,
                                 causal_mask(inputs.mask))
    last_logits = self.unembed(h[:, -1])
    cache_dtype = jnp.dtype(self.config.dtype)
    pad = ((0, 0), (0, 0), (0, cache_size - t), (0, 0), (0, 0))
    real = inputs.mask != 0
    position = jnp.max(jnp.where(real[None], inputs.positions, -1),
                       axis=(0, 2)) + 1
    cache = KVCache(
        k=jnp.pad(k.astype(cache_dtype), pad),
        v=jnp.pad(v.astype(cache_dtype), pad),
        mask=jnp.pad(real.astype(jnp.int32), ((0, 0), (0, cache_size - t))),
        index=jnp.asarray(t, jnp.int32),
        position=position.astype(jnp.int32))
    return last_logits, cache

  def decode_step(self, tokens: jax.Array, cache: KVCache
                  ) -> tuple[jax.Array, KVCache]:
    b = tokens.shape[0]
    x = self.text.embed_tokens(tokens[:, None])
    positions = jnp.broadcast_to(cache.position[None, :, None], (3, b, 1))
    h, (k, v) = self.text.decode(
        x, positions, jnp.ones((b, 1, 1), bool), kv_prefix=(cache.k, cache.v),
        prefix_mask=(cache.mask != 0)[:, None, :])
    logits = self.unembed(h[:, 0])
    i = cache.index
    return logits, cache.replace(
        k=jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype),
                                       (0, 0, i, 0, 0)),
        v=jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype),
                                       (0, 0, i, 0, 0)),
        mask=jax.lax.dynamic_update_slice(
            cache.mask, jnp.ones((b, 1), cache.mask.dtype), (0, i)),
        index=i + 1,
        position=cache.position + 1)


def _dummy_inputs(config: ModelConfig) -> ModelInputs:
  """Smallest inputs that touch every parameter (one merge group of patches)."""
  p = config.vision.merge_unit
  tokens = jnp.full((1, 2), config.image_token_id, jnp.int32)
  return ModelInputs(
      tokens=tokens, mask=jnp.ones((1, 2), jnp.int32),
      positions=jnp.zeros((3, 1, 2), jnp.int32),
      patches=jnp.zeros((1, p, config.vision.patch_dim), jnp.float32),
      patch_coords=jnp.zeros((1, p, 2), jnp.int32),
      patch_image=jnp.zeros((1, p), jnp.int32),
      patch_window=jnp.zeros((1, p), jnp.int32))


def _boxed_params(config: ModelConfig, rng, dtype):
  return VLM(config, param_dtype=dtype).init(
      rng, _dummy_inputs(config), method=VLM.forward)["params"]


# Below this many random values, init_params draws them in one op: XLA:CPU
# spends ~1 s compiling each random-normal op, which dominated tiny-model tests.
_FLAT_INIT_MAX = 1 << 24


def init_params(config: ModelConfig, rng, dtype=jnp.float32) -> dict:
  """Random params (plain nested dict); jit-able with config/dtype static.

  Kernels and embeddings ~ N(0, 0.02^2), RMSNorm scales 1, biases 0 (the same
  initializers the modules declare).
  """
  shapes = jax.eval_shape(
      lambda: nn.meta.unbox(_boxed_params(config, jax.random.key(0), dtype)))
  paths, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  kinds = [str(getattr(path[-1], "key", path[-1])) for path, _ in paths]
  n_random = sum(sd.size for (_, sd), kind in zip(paths, kinds)
                 if kind not in ("scale", "bias"))
  flat = None
  if n_random <= _FLAT_INIT_MAX:
    flat = jax.random.normal(rng, (n_random,), jnp.float32) * 0.02
  leaves, start = [], 0
  for i, ((_, sd), kind) in enumerate(zip(paths, kinds)):
    if kind == "scale":
      leaf = jnp.ones(sd.shape, dtype)
    elif kind == "bias":
      leaf = jnp.zeros(sd.shape, dtype)
    elif flat is not None:
      leaf = flat[start:start + sd.size].reshape(sd.shape).astype(dtype)
      start += sd.size
    else:
      leaf = (jax.random.normal(jax.random.fold_in(rng, i), sd.shape,
                                jnp.float32) * 0.02).astype(dtype)
    leaves.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def param_axes(config: ModelConfig) -> dict:
  """Pytree like params; each leaf a tuple of logical axis names (or None).

  Tuples are leaves: map with `jax.tree.map(f, params, axes)` (params first)
  or pass `is_leaf=lambda x: isinstance(x, tuple)`.
  """
  boxed = jax.eval_shape(
      lambda: _boxed_params(config, jax.random.key(0), jnp.float32))
  return jax.tree.map(lambda b: tuple(b.names), boxed,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def forward(params, config: ModelConfig, inputs: ModelInputs) -> jax.Array:
  """float32 logits [B, T, V]."""
  return VLM(config).apply({"params": params}, inputs, method=VLM.forward)


def hidden_states(params, config: ModelConfig, inputs: ModelInputs
                  ) -> jax.Array:
  """Final-normed hidden states [B, T, D], before the lm head."""
  return VLM(config).apply({"params": params}, inputs, method=VLM.hidden)


def unembed(params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
  """float32 logits [..., V] from hidden [..., D] (e.g. per chunk of T)."""
  return VLM(config).apply({"params": params}, hidden, method=VLM.unembed)


def init_cache(config: ModelConfig, batch: int, size: int, dtype=None
               ) -> KVCache:
  """An empty cache of `size` slots (dtype defaults to config.dtype)."""
  t = config.text
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (t.num_layers, batch, size, t.num_kv_heads, t.head_dim)
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                 mask=jnp.zeros((batch, size), jnp.int32),
                 index=jnp.zeros((), jnp.int32),
                 position=jnp.zeros((batch,), jnp.int32))


def cache_axes(config: ModelConfig) -> KVCache:
  """KVCache-shaped pytree of logical axis tuples."""
  del config  # Same names for every shape.
  kv = ("layers", "batch", "length", "kv_heads", "head_dim")
  return KVCache(k=kv, v=kv, mask=("batch", "length"), index=(),
                 position=("batch",))


def prefill(params, config: ModelConfig, inputs: ModelInputs, cache_size: int
            ) -> tuple[jax.Array, KVCache]:
  """Runs LEFT-padded prompts [B, T], T <= cache_size.

  Returns float32 logits [B, V] at position T-1 and the filled cache.
  """
  return VLM(config).apply({"params": params}, inputs, cache_size,
                           method=VLM.prefill)


def decode_step(params, config: ModelConfig, tokens: jax.Array,
                cache: KVCache) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row; returns float32 logits [B, V] and the cache.

  Writes slot `cache.index`; the caller keeps index < cache size. jit with
  the cache donated so the update happens in place.
  """
  return VLM(config).apply({"params": params}, tokens, cache,
                           method=VLM.decode_step)
