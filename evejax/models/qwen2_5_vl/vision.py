"""Qwen2.5-VL's vision tower: patch embed, 2D rotary, window/full attention, merger.

14-pixel patches (rows of 3 x 2 x 14 x 14 = 1176 values) through a Conv3d
without bias; 32 blocks of RMSNorm + attention + RMSNorm + SwiGLU (with
biases), full attention within an image in blocks 7, 15, 23, 31 and
window attention (112-pixel windows = 4x4 merged units) elsewhere; the merger
RMS-normalises each patch, groups 2x2 blocks and projects them to the text
width (Linear, exact GELU, Linear).

Inputs follow `evejax.models.inputs.ModelInputs`: each example's patch rows in
2x2 merge-block order with (row, col), image and window ids per row. The
reference permutes rows into window order and attends within contiguous
chunks; here attention is restricted instead, which is exactly equivalent
because each window is a union of whole merge groups, and keeps shapes static:
by dense masks under XLA, by segment ids (one per image, or per window of an
image) under the flash kernels (`evejax.models.attention`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evejax.models import attention
from evejax.models import layers
from evejax.models.presets import VisionConfig


def attention_masks(patch_image: jax.Array, patch_window: jax.Array,
                    implementation: str = "xla"):
  """(window_mask, image_mask); padding rows see nothing.

  Under xla each is a bool [B, P, P]; under a kernel, `attention.Segments`
  whose ids are the image, or the (window, image) pair, of each row.
  """
  if implementation != "xla":
    p = patch_image.shape[1]
    valid = patch_image >= 0
    # Window ids below P and image ids below P: one id per (window, image).
    window = jnp.where(valid, patch_window * p + patch_image, -1)
    return (attention.within_segments(window, implementation),
            attention.within_segments(patch_image, implementation))
  valid = patch_image >= 0
  both = valid[:, :, None] & valid[:, None, :]
  same_image = (patch_image[:, :, None] == patch_image[:, None, :]) & both
  same_window = (patch_window[:, :, None] == patch_window[:, None, :]) & same_image
  return same_window, same_image


class VisionBlock(nn.Module):
  """x + attn(norm1(x)); x + mlp(norm2(x)). One layer of the scanned stack."""
  config: VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, is_full, cos, sin, window_mask, image_mask):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.RMSNorm(c.rms_norm_eps, **kw, name="norm1")(x)
    qkv = layers.Linear((c.hidden_size,), (3, c.num_heads, c.head_dim),
                        ("vision_embed",), ("qkv", "heads", "head_dim"),
                        use_bias=True, **kw, name="qkv")(h)
    q = layers.apply_rotary(qkv[:, :, 0], cos, sin)
    k = layers.apply_rotary(qkv[:, :, 1], cos, sin)
    # One compiled body for all layers: the layer's kind is data, not code.
    mask = jax.tree.map(lambda full, window: jnp.where(is_full, full, window),
                        image_mask, window_mask)
    o = attention.attend(q, k, qkv[:, :, 2], mask)
    x = x + layers.Linear((c.num_heads, c.head_dim), (c.hidden_size,),
                          ("heads", "head_dim"), ("vision_embed",),
                          use_bias=True, **kw, name="proj")(o)
    h = layers.RMSNorm(c.rms_norm_eps, **kw, name="norm2")(x)
    x = x + layers.SwiGLU(c.hidden_size, c.intermediate_size, "vision_embed",
                          "vision_mlp", use_bias=True, **kw, name="mlp")(h)
    return x, None


class PatchMerger(nn.Module):
  """RMSNorm -> concat 4 consecutive rows -> Linear -> exact GELU -> Linear."""
  config: VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.RMSNorm(c.rms_norm_eps, **kw, name="ln_q")(x)
    b, p, d = x.shape
    width = d * c.merge_unit
    x = x.reshape(b, p // c.merge_unit, width)
    x = layers.Linear((width,), (width,), ("vision_embed",), ("vision_mlp",),
                      use_bias=True, **kw, name="fc1")(x)
    x = jax.nn.gelu(x, approximate=False)
    return layers.Linear((width,), (c.out_hidden_size,), ("vision_mlp",),
                         ("embed",), use_bias=True, **kw, name="fc2")(x)


class VisionTower(nn.Module):
  """Patches [B, P, patch_dim] -> merged features [B, P / 4, out_hidden]."""
  config: VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False
  attention: str = "xla"  # a resolved implementation (`attention.resolve`)

  @nn.compact
  def __call__(self, patches, patch_coords, patch_image, patch_window):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if patches.shape[1] % c.merge_unit:
      raise ValueError(
          f"patches has {patches.shape[1]} rows per example; it must be a "
          f"multiple of {c.merge_unit} (whole merge groups): pad the bucket.")
    x = layers.Linear((c.patch_dim,), (c.hidden_size,), ("patch",),
                      ("vision_embed",), **kw, name="patch_embed")(patches)
    cos, sin = layers.patch_rotary_cos_sin(patch_coords, c.head_dim,
                                           c.rope_theta)
    window_mask, image_mask = attention_masks(patch_image, patch_window,
                                              self.attention)
    is_full = jnp.array([i in c.fullatt_block_indexes for i in range(c.depth)])

    block = VisionBlock
    if self.remat:
      block = nn.remat(block, prevent_cse=False)
    stack = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=c.depth, metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = stack(c, **kw, name="blocks")(x, is_full, cos, sin, window_mask,
                                          image_mask)
    return PatchMerger(c, **kw, name="merger")(x)
