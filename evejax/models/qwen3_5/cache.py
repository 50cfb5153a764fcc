"""`HybridCache`: Qwen3.5's generation state, KV for attention layers and a
fixed-size state for DeltaNet layers, one pytree with the batch axis first.

Per sequence (9B, bf16 activations): each of the 24 DeltaNet layers keeps a
conv window (the last 3 of in_qkv's outputs, 8192 channels) and a fp32
recurrent state (32 heads of 128 x 128: 2 MiB), 48 MiB in all whatever the
length; each of the 8 attention layers keeps keys and values like every
other family (32 KiB per token in all). A decode step reads the DeltaNet
state once, so its cost grows with the context only through the 8 attention
layers.

Every leaf has the batch axis first (`cache_axes` names them), so the
sampler replicates rows (groups), shards them and grows the 'length' axis
of the KV leaves without knowing what the model is; a row (slot) can be
copied in or out by indexing every leaf on axis 0.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from evejax.models.presets import ModelConfig


@flax.struct.dataclass
class HybridCache:
  """The cache of a batch of left-padded sequences (module docstring)."""
  k: tuple[jax.Array, ...]      # per attention layer [B, kv_heads, S, hd]
  v: tuple[jax.Array, ...]      # per attention layer [B, kv_heads, S, hd]
  conv: tuple[jax.Array, ...]   # per DeltaNet layer [B, K-1, Hk, W]
  state: tuple[jax.Array, ...]  # per DeltaNet layer fp32 [B, Hv, dk, dv]
  mask: jax.Array      # int32 [B, S]; 1 for filled real slots
  index: jax.Array     # int32 []; next KV slot to write (shared by all rows)
  position: jax.Array  # int32 [B]; next M-RoPE text position per row

  @property
  def size(self) -> int:
    return self.mask.shape[1]

  def per_layer(self, config: ModelConfig) -> list[tuple]:
    """Each layer's cache in layer order: (k, v) or (conv, state)."""
    full = iter(zip(self.k, self.v))
    linear = iter(zip(self.conv, self.state))
    return [next(linear) if i in config.text.linear_layers else next(full)
            for i in range(config.text.num_layers)]

  def with_layers(self, config: ModelConfig, layers: list[tuple],
                  **kw) -> "HybridCache":
    """This cache with the per-layer caches `layers` (layer order) and `kw`."""
    return from_layers(config, layers, **{
        "mask": self.mask, "index": self.index, "position": self.position,
        **kw})


def from_layers(config: ModelConfig, layers: list[tuple], *, mask, index,
                position) -> HybridCache:
  """A cache from per-layer caches in layer order: (k, v) or (conv, state)."""
  t = config.text
  full = [layers[i] for i in t.full_layers]
  linear = [layers[i] for i in t.linear_layers]
  return HybridCache(k=tuple(k for k, _ in full), v=tuple(v for _, v in full),
                     conv=tuple(c for c, _ in linear),
                     state=tuple(s for _, s in linear),
                     mask=mask, index=index, position=position)


def init_cache(config: ModelConfig, batch: int, size: int, dtype=None
               ) -> HybridCache:
  """An empty cache of `size` KV slots (dtype defaults to config.dtype; the
  recurrent states are fp32)."""
  t = config.text
  dtype = jnp.dtype(dtype or config.dtype)
  kv = (batch, t.num_kv_heads, size, t.head_dim)
  conv = (batch, t.linear_conv_kernel_dim - 1, t.linear_num_key_heads,
          t.linear_group_width)
  state = (batch, t.linear_num_value_heads, t.linear_key_head_dim,
           t.linear_value_head_dim)
  n_full, n_linear = len(t.full_layers), len(t.linear_layers)
  return HybridCache(
      k=tuple(jnp.zeros(kv, dtype) for _ in range(n_full)),
      v=tuple(jnp.zeros(kv, dtype) for _ in range(n_full)),
      conv=tuple(jnp.zeros(conv, dtype) for _ in range(n_linear)),
      state=tuple(jnp.zeros(state, jnp.float32) for _ in range(n_linear)),
      mask=jnp.zeros((batch, size), jnp.int32),
      index=jnp.zeros((), jnp.int32),
      position=jnp.zeros((batch,), jnp.int32))


def cache_axes(config: ModelConfig) -> HybridCache:
  """HybridCache-shaped pytree of logical axis tuples."""
  t = config.text
  kv = ("batch", "kv_heads", "length", "head_dim")
  n_full, n_linear = len(t.full_layers), len(t.linear_layers)
  return HybridCache(
      k=(kv,) * n_full, v=(kv,) * n_full,
      conv=(("batch", None, "linear_heads", None),) * n_linear,
      state=(("batch", "linear_heads", None, None),) * n_linear,
      mask=("batch", "length"), index=(), position=("batch",))
