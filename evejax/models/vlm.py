"""The model of every family, applied functionally: the one interface above it.

    params = init_params(config, rng)                  # plain nested dict
    logits = forward(params, config, inputs)           # float32 [B, T, V]
    last, cache = prefill(params, config, prompts, cache_size=S)
    logits, cache = decode_step(params, config, tokens, cache)

`config.family` picks the architecture (`evejax.models.families`: Qwen2.5-VL,
Qwen3-VL or Qwen3.5); every function here takes any and callers never branch
on it. The cache is a pytree whose every leaf has the batch axis first
(`cache_axes` names them): a `KVCache`, or Qwen3.5's `HybridCache` (KV for
attention layers, a conv window and a recurrent state for DeltaNet layers).
The params tree is {"vision": ..., "text": ...} for every family.

For sampling, convert the params once with `fast = inference_params(params,
config)` (text weights in the compute dtype, one array per layer) and pass
`fast` to prefill/decode_step: the layers then run unrolled and a decode step
reads every weight in place instead of copying it out of the scanned stack.
Both layouts give the same logits; the layout of `params` picks the path.

`config` is a hashable `ModelConfig`: pass it as a static argument of jax.jit.
Image features are scattered on device: the k-th `image_token_id` token (among
real tokens) of an example receives merged vision feature k of that example.
Prompts for `prefill` are LEFT-padded so all rows share one cache write index.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from evejax.models import decoder
from evejax.models import families
from evejax.models.decoder import KVCache
from evejax.models.inputs import ModelInputs
from evejax.models.presets import ModelConfig
from evejax.models.vlm_base import causal_mask

__all__ = [
    "KVCache", "module", "init_params", "param_axes", "forward",
    "hidden_states", "unembed", "init_cache", "cache_axes", "prefill",
    "decode_step", "causal_mask", "inference_params", "inference_param_axes",
]


def module(config: ModelConfig, *, param_dtype=jnp.float32,
           scan_layers: bool = True) -> nn.Module:
  """The flax module of the config's family (a `vlm_base.VLMBase`)."""
  return families.of(config).module(config, param_dtype=param_dtype,
                                    scan_layers=scan_layers)


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
  return module(config, param_dtype=dtype).init(
      rng, _dummy_inputs(config), method="forward")["params"]


# Leaves initialised to zeros: biases and zero-centred norm scales (1 + w).
_ZERO_INIT = ("bias", "centered_scale")

# Below this many random values, init_params draws them in one op: XLA:CPU
# spends ~1 s compiling each random-normal op, which dominated tiny-model tests.
_FLAT_INIT_MAX = 1 << 24


def init_params(config: ModelConfig, rng, dtype=jnp.float32) -> dict:
  """Random params (plain nested dict); jit-able with config/dtype static.

  Kernels, embeddings and tables ~ N(0, 0.02^2), norm scales 1, biases and
  zero-centred norm scales 0 (the same initializers the modules declare).
  Leaves are `dtype` except those the model declares fp32 whatever the
  param dtype (Qwen3.5's A_log and gated-norm scales).
  """
  shapes = jax.eval_shape(
      lambda: nn.meta.unbox(_boxed_params(config, jax.random.key(0), dtype)))
  paths, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  kinds = [str(getattr(path[-1], "key", path[-1])) for path, _ in paths]
  n_random = sum(sd.size for (_, sd), kind in zip(paths, kinds)
                 if kind != "scale" and kind not in _ZERO_INIT)
  flat = None
  if n_random <= _FLAT_INIT_MAX:
    flat = jax.random.normal(rng, (n_random,), jnp.float32) * 0.02
  leaves, start = [], 0
  for i, ((_, sd), kind) in enumerate(zip(paths, kinds)):
    if kind == "scale":
      leaf = jnp.ones(sd.shape, sd.dtype)
    elif kind in _ZERO_INIT:
      leaf = jnp.zeros(sd.shape, sd.dtype)
    elif flat is not None:
      leaf = flat[start:start + sd.size].reshape(sd.shape).astype(sd.dtype)
      start += sd.size
    else:
      leaf = (jax.random.normal(jax.random.fold_in(rng, i), sd.shape,
                                jnp.float32) * 0.02).astype(sd.dtype)
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


def _num_blocks(config: ModelConfig) -> int:
  """Blocks of the scanned text stack (layers, or groups of layers)."""
  return families.of(config).module.text_model.num_blocks(config.text)


@functools.lru_cache(maxsize=16)
def _inference_dtypes(config: ModelConfig) -> dict:
  """ShapeDtypeStructs of the unrolled params in the compute dtype, as the
  model declares them (a leaf declared fp32 stays fp32)."""
  model = module(config, param_dtype=jnp.dtype(config.dtype), scan_layers=False)
  return jax.eval_shape(lambda: nn.meta.unbox(model.init(
      jax.random.key(0), _dummy_inputs(config), method="forward")["params"]))


@functools.partial(jax.jit, static_argnums=2)
def _take_layer(stacked, i, dtypes: tuple) -> dict:
  # `i` is traced, so one small program serves every layer (one program
  # slicing out all 28 layers took 4 s to compile on CPU). The outputs are
  # sharded like the inputs minus the unsharded 'layers' axis: XLA propagates
  # the input shardings through the slice. `dtypes`: each leaf's, in order.
  leaves, treedef = jax.tree.flatten(stacked)
  return jax.tree.unflatten(treedef, [x[i].astype(d)
                                      for x, d in zip(leaves, dtypes)])


def inference_params(params, config: ModelConfig) -> dict:
  """Params for fast prefill/decode_step: the text weights cast to the
  compute dtype, the stacked layers split into layers_0, layers_1, ...

  Prefill and decode_step then run the layers unrolled, reading each weight
  in place and never casting it again. Call it outside jit, once per round of
  generation: it copies the decoder layers (and casts whatever is not yet in
  the compute dtype) but passes every other array through as it is.
  """
  # Leaves the model declares fp32 (Qwen3.5's A_log) stay fp32, never
  # rounded on the way. Outside jit, astype to an array's own dtype returns
  # that same array.
  dtypes = _inference_dtypes(config)["text"]
  text = params["text"]
  if "layers" in text:  # else already unrolled
    block = tuple(str(d.dtype) for d in jax.tree.leaves(dtypes["layers_0"]))
    text = decoder.unstack_layers(
        text, _num_blocks(config),
        lambda stacked, i: _take_layer(stacked, i, block))
  return {**params, "text": jax.tree.map(lambda x, d: x.astype(d.dtype), text,
                                         dtypes)}


def inference_param_axes(config: ModelConfig) -> dict:
  """`param_axes` for `inference_params`: the 'layers' axis is gone."""
  axes = param_axes(config)
  drop_layers = lambda stacked, i: jax.tree.map(
      lambda names: names[1:], stacked, is_leaf=lambda x: isinstance(x, tuple))
  text = decoder.unstack_layers(axes["text"], _num_blocks(config),
                                 drop_layers)
  return {**axes, "text": text}


def _model(params, config: ModelConfig) -> nn.Module:
  """The module for this params layout (scanned or unrolled layers)."""
  return module(config, scan_layers="layers" in params["text"])


def forward(params, config: ModelConfig, inputs: ModelInputs) -> jax.Array:
  """float32 logits [B, T, V]."""
  return _model(params, config).apply({"params": params}, inputs,
                                     method="forward")


def hidden_states(params, config: ModelConfig, inputs: ModelInputs
                  ) -> jax.Array:
  """Final-normed hidden states [B, T, D], before the lm head."""
  return _model(params, config).apply({"params": params}, inputs,
                                     method="hidden")


def unembed(params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
  """float32 logits [..., V] from hidden [..., D] (e.g. per chunk of T)."""
  return _model(params, config).apply({"params": params}, hidden,
                                     method="unembed")


def init_cache(config: ModelConfig, batch: int, size: int, dtype=None):
  """An empty cache of `size` slots (dtype defaults to config.dtype): a
  `KVCache`, or the family's own cache pytree (Qwen3.5's `HybridCache`)."""
  return families.of(config).module.init_cache(config, batch, size, dtype)


def cache_axes(config: ModelConfig):
  """The cache's pytree of logical axis tuples (batch axis first)."""
  return families.of(config).module.cache_axes(config)


def prefill(params, config: ModelConfig, inputs: ModelInputs, cache_size: int
            ) -> tuple[jax.Array, KVCache]:
  """Runs LEFT-padded prompts [B, T], T <= cache_size.

  `params` from `init_params` or (faster) `inference_params`. Returns float32
  logits [B, V] at position T-1 and the filled cache.
  """
  return _model(params, config).apply({"params": params}, inputs, cache_size,
                           method="prefill")


def decode_step(params, config: ModelConfig, tokens: jax.Array,
                cache: KVCache) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row; returns float32 logits [B, V] and the cache.

  Writes slot `cache.index`; the caller keeps index < cache size. jit with
  the cache donated so the update happens in place. Pass `inference_params`
  for speed: with scanned params every step copies each layer's weights (and
  the cache, to stack it) before using them.
  """
  return _model(params, config).apply({"params": params}, tokens, cache,
                           method="decode_step")
