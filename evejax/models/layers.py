"""Building blocks shared by the vision towers and text decoders of every family.

RMSNorm, LayerNorm, SwiGLU, rotary helpers (1D and the 2D patch rotary) and
masked multi-head attention with GQA.
Parameters are declared with logical axis names (`nn.with_logical_partitioning`)
so `evejax.models.vlm.param_axes` can read them without materialising weights;
at apply time plain arrays are accepted. Numerics follow the reference: RMSNorm
statistics, rotary angles and softmax run in fp32 whatever the compute dtype.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Axes = tuple[str | None, ...]

# Finite (not -inf) so a query row with no visible key (padding) gives a
# uniform softmax instead of NaN; such rows are zeroed afterwards.
_MASK_VALUE = -1e30


def normal_init(stddev: float = 0.02):
  return nn.initializers.normal(stddev=stddev)


def param(module: nn.Module, name: str, init, shape: Sequence[int],
          axes: Axes, dtype) -> jax.Array:
  """Declares a parameter carrying logical axis names."""
  assert len(axes) == len(shape), (name, shape, axes)
  return module.param(name, nn.with_logical_partitioning(init, axes),
                      tuple(shape), dtype)


class RMSNorm(nn.Module):
  """RMSNorm with fp32 statistics; the scale multiplies in the compute dtype."""
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = param(self, "scale", nn.initializers.ones, (x.shape[-1],), (None,),
                  self.param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    return y * scale.astype(self.dtype)


class CenteredRMSNorm(nn.Module):
  """RMSNorm with a zero-centred scale: x / rms(x) * (1 + w) (Gemma, Qwen3.5).

  w is stored as trained (0 = identity) in `centered_scale`, initialised to
  zeros; the whole product runs in fp32 and is cast once at the end (the
  reference multiplies before casting, unlike `RMSNorm`).
  """
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = param(self, "centered_scale", nn.initializers.zeros, (x.shape[-1],),
              (None,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.eps) * (1.0 + w.astype(jnp.float32))
    return y.astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm (scale and bias) with fp32 statistics, applied in the compute dtype."""
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = (x.shape[-1],)
    scale = param(self, "scale", nn.initializers.ones, width, (None,),
                  self.param_dtype)
    bias = param(self, "bias", nn.initializers.zeros, width, (None,),
                 self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    return y * scale.astype(self.dtype) + bias.astype(self.dtype)


class Linear(nn.Module):
  """y = x @ kernel (+ bias); kernel shape `in_shape + out_shape`.

  Multi-axis shapes let attention keep heads as their own (shardable) axis
  instead of reshaping flat projections.
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  in_axes: Axes
  out_axes: Axes
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  stddev: float = 0.02
  # e.g. float32 for logits: accumulate and return fp32 from bf16 operands.
  out_dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = param(self, "kernel", normal_init(self.stddev),
                   self.in_shape + self.out_shape, self.in_axes + self.out_axes,
                   self.param_dtype)
    n_in = len(self.in_shape)
    y = jax.lax.dot_general(
        x.astype(self.dtype), kernel.astype(self.dtype),
        ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())),
        preferred_element_type=self.out_dtype)
    if self.use_bias:
      bias = param(self, "bias", nn.initializers.zeros, self.out_shape,
                   self.out_axes, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)); Qwen's vision MLP has biases, the LM's not."""
  hidden: int
  intermediate: int
  embed_axis: str
  mlp_axis: str
  use_bias: bool
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(use_bias=self.use_bias, dtype=self.dtype,
              param_dtype=self.param_dtype)
    up_in = dict(in_shape=(self.hidden,), out_shape=(self.intermediate,),
                 in_axes=(self.embed_axis,), out_axes=(self.mlp_axis,))
    gate = Linear(**up_in, **kw, name="gate")(x)
    up = Linear(**up_in, **kw, name="up")(x)
    return Linear(in_shape=(self.intermediate,), out_shape=(self.hidden,),
                  in_axes=(self.mlp_axis,), out_axes=(self.embed_axis,), **kw,
                  name="down")(jax.nn.silu(gate) * up)


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates x [..., T, heads, head_dim] by cos/sin [..., T, head_dim] in fp32."""
  x32 = x.astype(jnp.float32)
  cos = cos[..., None, :]
  sin = sin[..., None, :]
  return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def inv_frequencies(dim: int, theta: float) -> jax.Array:
  """1 / theta^(2i/dim) for i < dim/2, fp32."""
  return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def interleaved_mrope_axes(dim: int, section) -> np.ndarray:
  """int [dim/2]: which position (0 T, 1 H, 2 W) drives each frequency.

  Frequency j takes H if j % 3 == 1 and j < 3 * section[1], W if j % 3 == 2
  and j < 3 * section[2], else T (Qwen3-VL's and Qwen3.5's interleaving).
  """
  j = np.arange(dim // 2)
  _, s_h, s_w = section
  axis = np.zeros_like(j)
  axis[(j % 3 == 1) & (j < 3 * s_h)] = 1
  axis[(j % 3 == 2) & (j < 3 * s_w)] = 2
  return axis


def interleaved_mrope_cos_sin(positions: jax.Array, dim: int, theta: float,
                              section) -> tuple[jax.Array, jax.Array]:
  """Interleaved M-RoPE tables [B, T, dim] from positions [3, B, T], fp32.

  `dim` is the rotary width: the head_dim (Qwen3-VL) or its rotated part
  (Qwen3.5: 64 of 256); the frequencies are theta^(-2j/dim). Rotate-half
  pairs channel j with j + dim/2. Text (three equal positions) gets plain RoPE.
  """
  inv = inv_frequencies(dim, theta)
  freqs = positions.astype(jnp.float32)[..., None] * inv  # [3, B, T, dim/2]
  axis = interleaved_mrope_axes(dim, section)
  ang = jnp.where(axis == 1, freqs[1], jnp.where(axis == 2, freqs[2], freqs[0]))
  ang = jnp.concatenate([ang, ang], axis=-1)
  return jnp.cos(ang), jnp.sin(ang)


def patch_rotary_cos_sin(coords: jax.Array, head_dim: int, theta: float
                         ) -> tuple[jax.Array, jax.Array]:
  """2D rotary tables [B, P, head_dim] from (row, col) coords [B, P, 2], fp32.

  The vision towers' rotary: head_dim/4 frequencies, angles row * inv then
  col * inv (head_dim/2), doubled to cover the whole head (rotate-half layout).
  """
  inv = inv_frequencies(head_dim // 2, theta)
  c = coords.astype(jnp.float32)
  ang = jnp.concatenate([c[..., 0:1] * inv, c[..., 1:2] * inv], axis=-1)
  ang = jnp.concatenate([ang, ang], axis=-1)
  return jnp.cos(ang), jnp.sin(ang)


# Queries per block when a long sequence attends (prefill, training, the
# vision tower): the fp32 scores are [B, H, block, S] instead of [B, H, T, S].
QUERY_BLOCK = 1024


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              query_block: int | None = None) -> jax.Array:
  """Masked softmax attention with grouped KV heads.

  Args:
    q: [B, T, H, D] queries.
    k, v: [B, S, K, D] keys/values, H a multiple of K (a decode step passes
      swapped views of its [B, K, S, D] cache; XLA folds the swap into the dots).
    mask: bool [B, T, S] (or broadcastable), True where a query sees a key.
    query_block: queries per block (default QUERY_BLOCK). Longer T runs in
      blocks, one after another, each recomputed in the backward pass rather
      than stored, so neither pass holds more than one block's scores (for
      8192 tokens and 28 heads that is 0.9 GiB per prompt, not 7.5). Every
      query's softmax is its own, so blocks change no value.

  Returns:
    [B, T, H, D] in q's dtype; rows that see no key at all are zero.
  """
  b, t, h, d = q.shape
  block = query_block or QUERY_BLOCK
  if t <= block:
    return _attend(q, k, v, jnp.broadcast_to(mask, (b, t, k.shape[1])))
  n = -(-t // block)
  pad = n * block - t
  mask = jnp.broadcast_to(mask, (b, t, k.shape[1]))
  if pad:  # padded queries see nothing (zero rows), then are cut off
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
  split = lambda x: jnp.moveaxis(x.reshape(b, n, block, *x.shape[2:]), 1, 0)
  attend = jax.checkpoint(lambda qm: _attend(qm[0], k, v, qm[1]))
  out = jax.lax.map(attend, (split(q), split(mask)))  # [n, B, block, H, D]
  return jnp.moveaxis(out, 0, 1).reshape(b, n * block, h, d)[:, :t]


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
            ) -> jax.Array:
  """`attention` for one block of queries; mask [B, T, S]."""
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  qg = q.reshape(b, t, kv_heads, h // kv_heads, d)
  s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
  m = mask[:, None, None]  # [B, 1, 1, T, S]
  s = jnp.where(m, s * (d ** -0.5), _MASK_VALUE)
  probs = jax.nn.softmax(s, axis=-1)
  probs = jnp.where(jnp.any(m, axis=-1, keepdims=True), probs, 0.0)
  # Batch dims (b, k) lead in both operands and the output, then transpose
  # the small result: asking the dot for [B, T, K, G, D] directly made XLA:CPU
  # run it as a slow batched matmul (0.29 ms vs 0.07 ms per decode layer).
  out = jnp.einsum("bkgts,bskd->bkgtd", probs.astype(v.dtype), v)
  return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, h, d).astype(q.dtype)
