"""Qwen3.5's text model: Gated DeltaNet layers and gated full attention.

Every layer is h += mixer(N1(h)); h += SwiGLU(N2(h)), the norms zero-centred
(`layers.CenteredRMSNorm`, x / rms(x) * (1 + w)), and the mixer one of
(9B: hidden 4096, 24 DeltaNet layers and 8 full ones, L L L F repeated):

Gated DeltaNet (`LinearAttentionLayer`, Hk key heads of dk, Hv = r * Hk value
heads of dv; 9B 16 / 32 of 128):
  1. pad tokens are zeroed first (the token mask multiplies the input): with
     bias-free projections and conv a pad then writes nothing into the state
     and the conv sees zeros, exactly as at a sequence start, so left padding
     is exact;
  2. in_qkv projects to q, k (Hk heads) and v (Hv heads), a causal depthwise
     conv of 4 taps runs over time on all of them, then SiLU; in_z gives the
     output gate, in_b -> beta = sigmoid, in_a -> the log-decay
     g = -exp(A_log) * softplus(a + dt_bias) (fp32);
  3. the gated delta rule (`delta_rule`: chunked for T > 1 or without a
     cache, one step in decode), q and k L2-normalised, value head j reading
     key head j // r;
  4. per value head RMSNorm (plain weight, kept fp32) times silu(z), out.
  The in_qkv and conv channels are stored grouped by key head, [Hk, q | k |
  r value heads] (the checkpoint's order is [all q | all k | all v]; the
  tensor table permutes), so sharding key heads over `tensor` keeps each
  device's q, k and v together and the split needs no communication.
Gated attention (`FullAttentionLayer`, 9B: 16 query heads on 4 KV heads of
256): q emits, per head, the query then an output gate of head_dim each;
q_norm / k_norm (zero-centred) before rotary; rotary on the first quarter of
each head (64 channels), interleaved M-RoPE over its 32 frequencies (theta
1e7, sections 11/11/10); attention through `decoder.attend` (xla, cudnn,
splash, the KV cache); the output times sigmoid(gate), then o.

The stack: `layer_types` repeats with some period p (4 in every released
model; p = num_layers when irregular). A block (`LayerGroup`) is one period,
its layers named by kind and order (linear_0, linear_1, linear_2, full_0);
`decoder.TextModelBase` scans the num_layers / p blocks for training and
unrolls them for sampling, so one compiled body holds p layers and an
irregular layout is one block of every layer. Each layer is rematerialised
on its own. What a block returns per layer, in order: (k, v) for attention,
(conv window, recurrent state) for DeltaNet (`cache.HybridCache`).

Memory (training): XLA may recompute the rematerialised layers of one block
side by side in the backward pass (nothing orders the recomputations), so a
block's peak holds several DeltaNet layers' temporaries: 4 layers of the 9B
shape, 4096 tokens, one row, CPU compiler: 14.2 GiB with L L L F in one
block, 6.9 GiB as L F L F in two, 3.4 GiB for 4 attention layers. Scanning
the consecutive DeltaNet layers of a block (an inner scan) or a custom VJP
that orders the recomputations would bring it to one layer's.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evejax.models import decoder
from evejax.models import layers
from evejax.models.presets import LINEAR_ATTENTION, Qwen3_5TextConfig
from evejax.models.qwen3_5 import delta_rule

# What transformers hard-codes: the gated norm's gate and the attention gate.
gated_norm_gate = jax.nn.silu
attention_gate = jax.nn.sigmoid


def mask_padding(h: jax.Array, token_mask: jax.Array | None) -> jax.Array:
  """Zeroes pad tokens before a DeltaNet layer's projections. Without it the
  conv mixes the last pads into the first real tokens, and the state carries
  that to the end (8.0 logits on a left-padded row in the reference)."""
  if token_mask is None:
    return h
  return h * token_mask[..., None].astype(h.dtype)


class GatedRMSNorm(nn.Module):
  """rms_norm(x) * w * silu(gate) per value head; w is plain (init 1) and
  kept fp32 whatever the param dtype (rounding it to bf16 moved logits by
  0.075 in the reference's measurement)."""
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, gate: jax.Array) -> jax.Array:
    w = layers.param(self, "scale", nn.initializers.ones, (x.shape[-1],),
                     (None,), jnp.float32)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    y = y.astype(jnp.float32) * w * gated_norm_gate(gate.astype(jnp.float32))
    return y.astype(self.dtype)


def _mlp(c: Qwen3_5TextConfig, kw: dict) -> nn.Module:
  return layers.SwiGLU(c.hidden_size, c.intermediate_size, "embed", "mlp",
                       use_bias=False, **kw, name="mlp")


class LinearAttentionLayer(nn.Module):
  """A Gated DeltaNet decoder layer (module docstring).

  `cache` is (conv window [B, K-1, Hk, W], state fp32 [B, Hv, dk, dv]) or
  None (a sequence start). Returns (x, the new (window, state)).
  """
  config: Qwen3_5TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cache, token_mask):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d, hk, hv = c.hidden_size, c.linear_num_key_heads, c.linear_num_value_heads
    dk, dv, width = (c.linear_key_head_dim, c.linear_value_head_dim,
                     c.linear_group_width)
    b, t = x.shape[:2]
    h = layers.CenteredRMSNorm(c.rms_norm_eps, **kw, name="input_norm")(x)
    h = mask_padding(h, token_mask)
    proj = lambda out, axes, name: layers.Linear(
        (d,), out, ("embed",), axes, **kw, name=name)(h)
    qkv = proj((hk, width), ("linear_heads", None), "in_qkv")
    z = proj((hv, dv), ("linear_heads", "head_dim"), "in_z")
    beta = jax.nn.sigmoid(proj((hv,), ("linear_heads",), "in_b"))
    a = proj((hv,), ("linear_heads",), "in_a")
    conv = layers.param(self, "conv_weight", layers.normal_init(0.02),
                        (c.linear_conv_kernel_dim, hk, width),
                        (None, "linear_heads", None), self.param_dtype)
    a_log = layers.param(self, "A_log", nn.initializers.zeros, (hv,),
                         ("linear_heads",), jnp.float32)
    dt_bias = layers.param(self, "dt_bias", nn.initializers.ones, (hv,),
                           ("linear_heads",), self.param_dtype)
    if cache is None:
      window = jnp.zeros((b, c.linear_conv_kernel_dim - 1, hk, width),
                         qkv.dtype)
      state = None
    else:
      window, state = cache
    qkv, window = delta_rule.causal_conv(qkv, conv, window)
    q, k = qkv[..., :dk], qkv[..., dk:2 * dk]
    v = qkv[..., 2 * dk:].reshape(b, t, hv, dv)
    g = -jnp.exp(a_log) * jax.nn.softplus(
        a.astype(jnp.float32) + dt_bias.astype(jnp.float32))
    q, k, v, beta, g = delta_rule.prepare(q, k, v, beta, g,
                                          c.value_heads_per_key_head)
    if state is not None and t == 1:  # decode: one step on the cached state
      o, state = delta_rule.step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0],
                                 g[:, 0], state)
      o = o[:, None]
    else:
      o, state = delta_rule.chunked(q, k, v, beta, g, state, c.chunk_size)
    o = GatedRMSNorm(c.rms_norm_eps, self.dtype, name="norm")(
        o.astype(self.dtype), z)
    x = x + layers.Linear((hv, dv), (d,), ("linear_heads", "head_dim"),
                          ("embed",), **kw, name="out")(o)
    h = layers.CenteredRMSNorm(c.rms_norm_eps, **kw, name="post_attn_norm")(x)
    return x + _mlp(c, kw)(h), (window, state)


def rotate_partial(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary on the first cos.shape[-1] channels of each head; the rest pass."""
  rd = cos.shape[-1]
  return jnp.concatenate([layers.apply_rotary(x[..., :rd], cos, sin),
                          x[..., rd:]], axis=-1)


class FullAttentionLayer(nn.Module):
  """A gated full-attention decoder layer (module docstring).

  Returns (x, (k, v)): x's rotated keys/values, or with `cache` (this
  layer's (k, v), each [B, kv_heads, S, hd]) the cache with x's written at
  slot `index` (`decoder.attend`).
  """
  config: Qwen3_5TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cache, cos, sin, mask, index):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d, hd = c.hidden_size, c.head_dim
    h = layers.CenteredRMSNorm(c.rms_norm_eps, **kw, name="input_norm")(x)
    # Per head: head_dim query channels, then head_dim gate channels.
    qg = layers.Linear((d,), (c.num_heads, 2, hd), ("embed",),
                       ("heads", None, "head_dim"), **kw, name="q")(h)
    q, gate = qg[:, :, :, 0], qg[:, :, :, 1]
    k = layers.Linear((d,), (c.num_kv_heads, hd), ("embed",),
                      ("kv_heads", "head_dim"), **kw, name="k")(h)
    v = layers.Linear((d,), (c.num_kv_heads, hd), ("embed",),
                      ("kv_heads", "head_dim"), **kw, name="v")(h)
    q = layers.CenteredRMSNorm(c.rms_norm_eps, **kw, name="q_norm")(q)
    k = layers.CenteredRMSNorm(c.rms_norm_eps, **kw, name="k_norm")(k)
    q, k = rotate_partial(q, cos, sin), rotate_partial(k, cos, sin)
    o, kv = decoder.attend(q, k, v, mask, cache, index)
    o = o * attention_gate(gate)
    x = x + layers.Linear((c.num_heads, hd), (d,), ("heads", "head_dim"),
                          ("embed",), **kw, name="o")(o)
    h = layers.CenteredRMSNorm(c.rms_norm_eps, **kw, name="post_attn_norm")(x)
    return x + _mlp(c, kw)(h), kv


def member_names(config: Qwen3_5TextConfig) -> list[str]:
  """The names of one block's layers, in order: linear_0, ..., full_0, ..."""
  names, count = [], {}
  for kind in config.layer_types[:config.period]:
    short = "linear" if kind == LINEAR_ATTENTION else "full"
    names.append(f"{short}_{count.get(short, 0)}")
    count[short] = count.get(short, 0) + 1
  return names


class LayerGroup(nn.Module):
  """One period of `layer_types`, unrolled; a block of the scanned stack.

  `cache`: per layer of the block its cache (see the layer classes) or None.
  Returns (x, per layer its new cache).
  """
  config: Qwen3_5TextConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, cache, cos, sin, mask, token_mask, index):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = []
    for pos, name in enumerate(member_names(c)):
      linear = name.startswith("linear")
      cls = LinearAttentionLayer if linear else FullAttentionLayer
      if self.remat:
        cls = nn.remat(cls, prevent_cse=False)
      layer = cls(c, **kw, name=name)
      layer_cache = None if cache is None else cache[pos]
      if linear:
        x, new = layer(x, layer_cache, token_mask)
      else:
        x, new = layer(x, layer_cache, cos, sin, mask, index)
      out.append(new)
    return x, tuple(out)


class TextModel(decoder.TextModelBase):
  """Embedding, the hybrid stack in blocks of one period, final norm, head."""
  block = LayerGroup
  # (cache, cos, sin, mask, token_mask, index) after x.
  scan_in_axes = (0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast,
                  nn.broadcast)
  block_remats_itself = True
  final_norm = layers.CenteredRMSNorm

  @classmethod
  def num_blocks(cls, config: Qwen3_5TextConfig) -> int:
    return config.num_layers // config.period

  def decode(self, x, positions, mask, token_mask=None, cache=None,
             index=None):
    """Runs all layers on embeddings x [B, T, D].

    Args:
      x: [B, T, D] input embeddings.
      positions: int [3, B, T] M-RoPE positions of x.
      mask: who sees whom in full attention: bool [B, T, T] or
        `attention.Segments`; with `cache`, bool [B, T, S] over cache slots.
      token_mask: int [B, T], 1 real token, 0 padding (zeroed in DeltaNet
        layers); None when every token is real (decode).
      cache: per block, per layer its cache (`LayerGroup`), or None.
      index: int32 [], the KV slot x's first token writes (with `cache`).

    Returns:
      (final-normed hidden [B, T, D], per block, per layer its new cache).
    """
    c = self.config
    cos, sin = layers.interleaved_mrope_cos_sin(
        positions, c.rotary_dim, c.rope_theta, c.mrope_section)
    x, blocks = self.run_layers(x, cache, cos, sin, mask, token_mask, index)
    return self.norm(x), blocks
