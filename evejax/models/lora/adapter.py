"""Adapter weights and the two ways a model runs with them.

An adapter is a plain nested dict that mirrors the params down to each adapted
Linear module and holds two arrays there:

    adapter["text"]["layers"]["q"] = {"lora_a": A, "lora_b": B}
    A: lead + in_shape + (rank,)     B: lead + (rank,) + out_shape

with `lead` = (num_layers,) for stacked (scanned) layers and () otherwise, so
each factor keeps the kernel's own axes and shards like it (`adapter_axes`).
The base weights never change; adapted, a kernel is W + s * A @ B with
s = cfg.scale.

Two ways to run the model with an adapter, one function each:
  * `merge`: the kernels become W + s * A @ B, in the kernel's layout and
    dtype; for sampling (once per generate call, on the unrolled inference
    layout too: a decode step then costs what the base model's does) and for
    exporting a full checkpoint.
  * `apply`: the model runs on its own weights and every adapted Linear adds
    s * dropout(x) @ A @ B (an explicit low-rank path, as PEFT computes it);
    for training. The backbone is not an argument of the gradient, and unlike
    the merged form no kernel-sized weight gradient is ever formed: the
    backward pass does rank-sized matmuls only. Dropout on the adapter's
    input (PEFT's `lora_dropout`) only exists in this form.

The low-rank path is added from outside the model: `apply` puts A, s * B
(and a dropout key) beside each adapted kernel in a copy of the params tree
and runs the model function under a Flax method interceptor that, for every
`evejax.models.layers.Linear` holding them, adds the update to the layer's
output. Under `nn.scan` the extra leaves are sliced per layer like the kernel.
All LoRA settings travel as data in that tree (s folded into B, the dropout
rate a leaf), so a jitted model function can never reuse a trace made with
other settings. The model files know nothing of LoRA.

Why not a library: qwix (tunix's LoRA) intercepts dot_generals of a module
instance and stores the factors inside the model's own params, which
conflicts with one backbone held once under several named adapters, offers no
merge into the sampler's unrolled weights and no PEFT layout; the math here
is two dot_generals.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from evejax.models import layers
from evejax.models.lora.config import LoraConfig, select_targets

A, B = "lora_a", "lora_b"
_KEY, _RATE = "lora_dropout_key", "lora_dropout_rate"


# ------------------------------------------------------------- tree walking

def modules(adapter: dict) -> list[tuple[tuple[str, ...], dict]]:
  """(module path, {'lora_a', 'lora_b'}) of every adapted module, in sorted
  key order (the order jax flattens dicts in)."""
  out = []

  def walk(node, path):
    if A in node:
      out.append((path, node))
      return
    for k in sorted(node):
      walk(node[k], path + (k,))
  walk(adapter, ())
  return out


def _get(tree, path, default=None):
  for k in path:
    if not isinstance(tree, dict) or k not in tree:
      return default
    tree = tree[k]
  return tree


def put(tree: dict, path, value) -> None:
  """tree[path[0]]...[path[-1]] = value, making the dicts on the way."""
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _copy_dicts(tree):
  """The same leaves in freshly made dicts (safe to update in place)."""
  if isinstance(tree, dict):
    return {k: _copy_dicts(v) for k, v in tree.items()}
  return tree


def _lead(a, b, kernel_ndim: int) -> int:
  """Leading (layers) dims of A and B: A.ndim + B.ndim = 2 lead + kernel + 2."""
  return a.ndim + b.ndim - 2 - kernel_ndim


def _placements(params: dict, adapter: dict):
  """Where each adapted module's factors go in `params`.

  Yields (adapter path, node, params module path, layer): layer is None when
  the params hold the kernel as the adapter does (both stacked, or neither),
  else the index into the adapter's layers axis for an unrolled layout, where
  a stacked key `layers` is `layers_0`, `layers_1`, ... (Flax's list names).
  """
  for path, node in modules(adapter):
    a, b = node[A], node[B]
    kernel = _get(params, path + ("kernel",))
    if kernel is not None:
      _check_shapes(path, kernel.shape, a.shape, b.shape)
      yield path, node, path, None
      continue
    for d in range(len(path)):
      parent = _get(params, path[:d])
      if isinstance(parent, dict) and f"{path[d]}_0" in parent:
        if f"{path[d]}_{a.shape[0]}" in parent:
          raise ValueError(
              f"The adapter has {a.shape[0]} layers at {'/'.join(path)} but "
              f"params have more ({'/'.join(path[:d + 1])}_{a.shape[0]}); "
              "adapter and params come from different model configs.")
        for i in range(a.shape[0]):
          where = path[:d] + (f"{path[d]}_{i}",) + path[d + 1:]
          kernel = _get(params, where + ("kernel",))
          if kernel is None:
            raise ValueError(
                f"The adapter has {a.shape[0]} layers at {'/'.join(path)} but "
                f"params have no {'/'.join(where)}/kernel; adapter and params "
                "come from different model configs.")
          _check_shapes(where, kernel.shape, a.shape[1:], b.shape[1:])
          yield path, node, where, i
        break
    else:
      raise ValueError(
          f"The adapter adapts {'/'.join(path)}/kernel, which params do not "
          "have; adapter and params come from different model configs.")


def _check_shapes(path, kernel, a, b) -> None:
  lead = len(a) + len(b) - 2 - len(kernel)
  n_in = len(a) - 1 - lead
  want = tuple(a[:-1]) + tuple(b[lead + 1:])
  if lead < 0 or n_in < 1 or tuple(kernel) != want or a[:lead] != b[:lead]:
    raise ValueError(
        f"Adapter factors for {'/'.join(path)}/kernel have shapes A {tuple(a)}, "
        f"B {tuple(b)}, which do not fit the kernel {tuple(kernel)}; adapter "
        "and params come from different model configs.")


# --------------------------------------------------------- init and axes

def init_adapter(cfg: LoraConfig, model_config, rng, dtype=jnp.float32) -> dict:
  """A fresh adapter for the kernels `cfg.targets` select.

  PEFT's default init: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming
  uniform with a = sqrt(5), fan_in = the kernel's input size), B = 0, so the
  adapted model is exactly the base model until B moves. Pure jnp: works
  under jax.eval_shape (abstract adapters for planning shardings) and jit
  with cfg/model_config static.
  """
  adapter: dict = {}
  for j, t in enumerate(select_targets(cfg, model_config)):
    bound = 1.0 / math.sqrt(math.prod(t.in_shape))
    a = jax.random.uniform(jax.random.fold_in(rng, j),
                           t.lead + t.in_shape + (cfg.rank,), dtype,
                           -bound, bound)
    b = jnp.zeros(t.lead + (cfg.rank,) + t.out_shape, dtype)
    put(adapter, t.module, {A: a, B: b})
  return adapter


def adapter_axes(adapter: dict, param_axes: dict) -> dict:
  """Logical axes of each factor, taken from the kernel it adapts.

  A: the kernel's (layers,) + input axes + ('lora_rank',); B: (layers,) +
  ('lora_rank',) + output axes. `adapter` may hold ShapeDtypeStructs.
  """
  out: dict = {}
  for path, node in modules(adapter):
    axes = _get(param_axes, path + ("kernel",))
    if axes is None:
      raise ValueError(f"param_axes has no {'/'.join(path)}/kernel for the "
                       "adapter; were they made for this model config?")
    a, b = node[A], node[B]
    lead = _lead(a, b, len(axes))
    n_in = a.ndim - 1 - lead
    put(out, path, {A: tuple(axes[:lead + n_in]) + ("lora_rank",),
                     B: tuple(axes[:lead]) + ("lora_rank",)
                        + tuple(axes[lead + n_in:])})
  return out


# ------------------------------------------------------------------ merge

def _merged_kernel(w, a, b, scale: float):
  lead = _lead(a, b, w.ndim)
  batch = tuple(range(lead))
  delta = jax.lax.dot_general(
      a, b, (((a.ndim - 1,), (lead,)), (batch, batch)),
      precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  return (w.astype(jnp.float32) + scale * delta).astype(w.dtype)


@functools.partial(jax.jit, static_argnames=("scale", "sharding"))
def _merged_layer(w, a, b, layer, scale, sharding):
  # `layer` is traced (None: the factors match w as they are), so one small
  # program per kernel shape serves every layer.
  if layer is not None:
    a = jax.lax.dynamic_index_in_dim(a, layer, keepdims=False)
    b = jax.lax.dynamic_index_in_dim(b, layer, keepdims=False)
  out = _merged_kernel(w, a, b, scale)
  if sharding is not None:  # stay laid out like the kernel
    out = jax.lax.with_sharding_constraint(out, sharding)
  return out


def _merge_into(tree: dict, params: dict, adapter: dict, cfg: LoraConfig
                ) -> None:
  """Replaces each adapted kernel of `tree` (own dicts, like `params`)."""
  for _, node, where, layer in _placements(params, adapter):
    w = _get(tree, where + ("kernel",))
    concrete = not isinstance(w, jax.core.Tracer)
    sharding = getattr(w, "sharding", None) if concrete else None
    if not isinstance(sharding, jax.sharding.NamedSharding):
      sharding = None
    # Assigning drops the tree's reference to the unmerged kernel at once,
    # so a tree made for this call holds one extra kernel at most.
    _get(tree, where)["kernel"] = _merged_layer(
        w, node[A], node[B], None if layer is None else jnp.int32(layer),
        scale=float(cfg.scale), sharding=sharding)


def merge(params: dict, adapter: dict | None, cfg: LoraConfig) -> dict:
  """params with every adapted kernel replaced by W + s * A @ B.

  Works on the training layout and on `vlm.inference_params`' unrolled one
  (the stacked factors are indexed per layer), eagerly or inside jit. The
  merged kernel has W's shape, dtype and (outside jit) sharding; s * A @ B is
  computed in fp32 at full precision and added to W in fp32 before the cast.
  A zero B gives back W bit for bit. Other leaves are the caller's arrays.
  """
  if adapter is None:
    return params
  tree = _copy_dicts(params)
  _merge_into(tree, params, adapter, cfg)
  return tree


def merge_owned(box: list, adapter: dict, cfg: LoraConfig) -> dict:
  """`merge` of the params in a one-element list, which it empties.

  For params made for this one call (the sampler's unrolled copy): with no
  other reference left, each unmerged kernel is freed as soon as its merged
  one exists, so merging holds one kernel more than the base, not a layout.
  """
  params = box.pop()
  tree = _copy_dicts(params)
  del params  # the caller's box was the other reference
  _merge_into(tree, tree, adapter, cfg)
  return tree


# -------------------------------------------------------- low-rank path

def _typed_key(rng) -> jax.Array:
  """A typed key from a typed key or raw uint32 key data."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng
  return jax.random.wrap_key_data(rng)


def dropout_key(rng, adapter: dict, path: tuple[str, ...],
                layer: int | None = None) -> jax.Array:
  """The key (raw uint32 data) of the dropout mask on one module's input.

  Module j (in `modules` order) gets fold_in(rng, j); a stacked module's
  layer i gets fold_in(fold_in(rng, j), i). One call of the model draws one
  mask per adapted module and layer, of the input's shape.
  """
  paths = [p for p, _ in modules(adapter)]
  if tuple(path) not in paths:
    raise ValueError(f"The adapter has no module {'/'.join(path)}; it adapts "
                     f"{['/'.join(p) for p in paths]}.")
  key = jax.random.fold_in(_typed_key(rng), paths.index(tuple(path)))
  if layer is not None:
    key = jax.random.fold_in(key, layer)
  return jax.random.key_data(key)


def dropout_mask(key_data, shape, rate, dtype=jnp.float32) -> jax.Array:
  """Inverted dropout: 0 with probability `rate`, else 1 / (1 - rate)."""
  keep = jax.random.bernoulli(jax.random.wrap_key_data(key_data), 1.0 - rate,
                              shape)
  return keep.astype(dtype) / (1.0 - jnp.asarray(rate, dtype))


def _low_rank_path(next_fun, args, kwargs, context):
  """Flax interceptor: y = Linear(x) + dropout(x) @ A @ (s B) where present."""
  module = context.module
  if (context.method_name != "__call__"
      or not isinstance(module, layers.Linear)
      or not module.has_variable("params", A)):
    return next_fun(*args, **kwargs)
  y = next_fun(*args, **kwargs)
  x = args[0] if args else kwargs["x"]
  a = module.get_variable("params", A)
  b = module.get_variable("params", B)
  if module.has_variable("params", _KEY):
    x = x * dropout_mask(module.get_variable("params", _KEY), x.shape,
                         module.get_variable("params", _RATE), x.dtype)
  n_in = len(module.in_shape)
  dt = module.dtype
  h = jax.lax.dot_general(
      x.astype(dt), a.astype(dt),
      ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
  delta = jax.lax.dot_general(h, b.astype(dt), (((h.ndim - 1,), (0,)), ((), ())),
                              preferred_element_type=module.out_dtype)
  return y + delta.astype(y.dtype)


def apply(fn: Callable, params: dict, adapter: dict | None, cfg: LoraConfig,
          *args, dropout_rng=None, **kwargs) -> Any:
  """fn(params, *args, **kwargs) with the adapter as an explicit low-rank path.

  `fn` is any model function of `evejax.models.vlm` (forward, hidden_states,
  unembed, prefill, ...), or a function that calls them with these params.
  Call it inside the jitted loss and differentiate with respect to the
  adapter only: the backbone then receives no gradient and no kernel-sized
  gradient is computed. With `dropout_rng` and cfg.dropout > 0 the adapter's
  input is dropped out as PEFT does in training (masks from `dropout_key`;
  pass a new key per step, and distinct keys to two calls in one step).
  Without it (evaluation, the reference policy's own adapter) no dropout.
  `adapter=None` runs the base model.
  """
  if adapter is None:
    return fn(params, *args, **kwargs)
  dropout = dropout_rng is not None and cfg.dropout > 0
  tree = _copy_dicts(params)
  for path, node, where, layer in _placements(params, adapter):
    a, b = node[A], node[B]
    if layer is not None:
      a, b = a[layer], b[layer]
    leaves = {A: a, B: b * jnp.asarray(cfg.scale, b.dtype)}
    if dropout:
      lead = _lead(a, b, _get(params, where + ("kernel",)).ndim)
      if lead:  # one key per stacked layer, sliced with the kernel by scan
        key = jnp.stack([dropout_key(dropout_rng, adapter, path, i)
                         for i in range(a.shape[0])])
      else:
        key = dropout_key(dropout_rng, adapter, path, layer)
      leaves[_KEY] = key
      leaves[_RATE] = jnp.full(key.shape[:-1], cfg.dropout, jnp.float32)
    _get(tree, where).update(leaves)
  with nn.intercept_methods(_low_rank_path):
    return fn(tree, *args, **kwargs)
