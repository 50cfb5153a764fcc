"""Qwen3-VL's vision tower: learned position table, full attention per image,
the main merger and the DeepStack mergers.

What a patch row goes through (8B: D = 1152, 27 blocks, 16 heads of 72):
  1. patch embed: 16-pixel patches, rows of 3 x 2 x 16 x 16 = 1536 values, a
     Conv3d *with* bias (= x @ W + b);
  2. + the learned absolute position table (48 x 48 rows of D), resampled to
     the image's h x w patch grid: bilinear with align-corners (row r samples
     r (S-1)/(h-1) of the table, clamped at the edge), the same for every
     frame, computed in fp32;
  3. blocks: x += attn(LN(x)); x += fc2(gelu_tanh(fc1(LN(x)))); LayerNorm with
     bias (eps 1e-6); 2D rotary on q and k (rows then columns, theta 1e4);
     full attention within each image, never across images, no windows;
  4. main merger ("pre-shuffle norm"): LN over each patch (width D), then 2x2
     merge groups of 4 consecutive rows -> 4D, fc1, *exact* GELU, fc2 to the
     text width: the features that replace the <|image_pad|> embeddings;
  5. DeepStack: the outputs of blocks `deepstack_visual_indexes` (0-based,
     8/16/24 for 8B) go through their own mergers ("post-shuffle norm": group
     to 4D first, then LN over 4D; exact GELU); feature k is added to the
     decoder's stream after decoder layer k.

Inputs follow `evejax.models.inputs.ModelInputs` (rows in merge-block order,
(row, col) and image id per row; the window ids are not read). Each row's image
grid h x w is recovered on device as 1 + the largest (row, col) of its image:
images are whole merge blocks, so every row and column of the grid occurs.
The blocks run as one `nn.scan`; the scan carries, beside x, one slot per
DeepStack block that takes x when the scan passes that block, so the stacked
blocks need no split and the scan keeps one compiled body. The backward pass
saves nothing for the slots (they enter only through a select): an 8-block
tower's gradient needs the same temporaries with three taps as with none.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evejax.models import attention
from evejax.models import layers
from evejax.models.presets import Qwen3VisionConfig


# The block MLP's activation (hidden_act "gelu_pytorch_tanh") and the
# mergers' (torch nn.GELU(): exact erf). At default init their inputs sit near
# 0, where the two agree to 1e-7; parity tests scale weights so they do not.
def block_gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=True)


def merger_gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)


def image_grid_sizes(patch_coords: jax.Array, patch_image: jax.Array
                     ) -> jax.Array:
  """int32 [B, P, 2]: (h, w) of each row's image grid (padding rows: anything)."""
  p = patch_image.shape[1]
  # Padding rows (image -1) form their own segment, p, out of the images' way.
  segment = jnp.where(patch_image >= 0, patch_image, p)

  def one(coords, seg):
    largest = jax.ops.segment_max(coords, seg, num_segments=p + 1)
    return largest[seg] + 1

  return jax.vmap(one)(patch_coords, segment)


def position_embedding(table: jax.Array, patch_coords: jax.Array,
                       grid_sizes: jax.Array, side: int) -> jax.Array:
  """fp32 [B, P, D]: the side x side table [side**2, D] resampled bilinearly
  (align corners, edge clamped) at each row's (row, col) of its h x w grid."""

  def taps(index, size):
    # index * (S-1) / (size-1) in fp32, the product first (exact for ints).
    src = (index.astype(jnp.float32) * (side - 1)
           / jnp.maximum(size - 1, 1).astype(jnp.float32))
    lo = jnp.floor(src)
    frac = src - lo
    lo = lo.astype(jnp.int32)
    return lo, jnp.minimum(lo + 1, side - 1), frac

  r0, r1, fr = taps(patch_coords[..., 0], grid_sizes[..., 0])
  c0, c1, fc = taps(patch_coords[..., 1], grid_sizes[..., 1])
  t = table.astype(jnp.float32)
  row = lambda r, c: jnp.take(t, r * side + c, axis=0)
  w = lambda a: a[..., None]
  return (w((1 - fr) * (1 - fc)) * row(r0, c0) + w((1 - fr) * fc) * row(r0, c1)
          + w(fr * (1 - fc)) * row(r1, c0) + w(fr * fc) * row(r1, c1))


class VisionMLP(nn.Module):
  """fc2(gelu_tanh(fc1(x))), both with biases (hidden_act gelu_pytorch_tanh)."""
  config: Qwen3VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.Linear((c.hidden_size,), (c.intermediate_size,),
                      ("vision_embed",), ("vision_mlp",), **kw, name="fc1")(x)
    x = block_gelu(x)
    return layers.Linear((c.intermediate_size,), (c.hidden_size,),
                         ("vision_mlp",), ("vision_embed",), **kw,
                         name="fc2")(x)


class VisionBlock(nn.Module):
  """x + attn(norm1(x)); x + mlp(norm2(x)); one layer of the scanned stack.

  The carry is (x, taps): taps [n, B, P, D] holds, for DeepStack block k, x
  as it left that block (zeros until the scan has passed it).
  """
  config: Qwen3VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, layer, cos, sin, mask):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x, taps = carry
    h = layers.LayerNorm(c.layer_norm_eps, **kw, name="norm1")(x)
    qkv = layers.Linear((c.hidden_size,), (3, c.num_heads, c.head_dim),
                        ("vision_embed",), ("qkv", "heads", "head_dim"),
                        use_bias=True, **kw, name="qkv")(h)
    q = layers.apply_rotary(qkv[:, :, 0], cos, sin)
    k = layers.apply_rotary(qkv[:, :, 1], cos, sin)
    o = attention.attend(q, k, qkv[:, :, 2], mask)
    x = x + layers.Linear((c.num_heads, c.head_dim), (c.hidden_size,),
                          ("heads", "head_dim"), ("vision_embed",),
                          use_bias=True, **kw, name="proj")(o)
    h = layers.LayerNorm(c.layer_norm_eps, **kw, name="norm2")(x)
    x = x + VisionMLP(c, **kw, name="mlp")(h)
    if taps is not None:
      hit = layer == jnp.asarray(c.deepstack_visual_indexes, jnp.int32)
      taps = jnp.where(hit[:, None, None, None], x[None].astype(taps.dtype),
                       taps)
    return (x, taps), None


class PatchMerger(nn.Module):
  """2x2 merge groups -> Linear -> exact GELU -> Linear, with a LayerNorm
  before the grouping (width D, the main merger) or after it (width 4D,
  `postshuffle`, the DeepStack mergers)."""
  config: Qwen3VisionConfig
  postshuffle: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = layers.LayerNorm(c.layer_norm_eps, **kw, name="norm")
    if not self.postshuffle:
      x = norm(x)
    b, p, d = x.shape
    width = d * c.merge_unit
    x = x.reshape(b, p // c.merge_unit, width)
    if self.postshuffle:
      x = norm(x)
    x = layers.Linear((width,), (width,), ("vision_embed",), ("vision_mlp",),
                      use_bias=True, **kw, name="fc1")(x)
    x = merger_gelu(x)
    return layers.Linear((width,), (c.out_hidden_size,), ("vision_mlp",),
                         ("embed",), use_bias=True, **kw, name="fc2")(x)


class VisionTower(nn.Module):
  """Patches [B, P, patch_dim] -> (merged features [B, P/4, out_hidden],
  DeepStack features [n, B, P/4, out_hidden], n = len(deepstack indexes))."""
  config: Qwen3VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: bool = False
  attention: str = "xla"  # a resolved implementation (`attention.resolve`)

  @nn.compact
  def __call__(self, patches, patch_coords, patch_image, patch_window):
    del patch_window  # no window attention in Qwen3-VL
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if patches.shape[1] % c.merge_unit:
      raise ValueError(
          f"patches has {patches.shape[1]} rows per example; it must be a "
          f"multiple of {c.merge_unit} (whole merge groups): pad the bucket.")
    x = layers.Linear((c.patch_dim,), (c.hidden_size,), ("patch",),
                      ("vision_embed",), use_bias=True, **kw,
                      name="patch_embed")(patches)
    table = layers.param(self, "pos_embed", layers.normal_init(0.02),
                         (c.num_position_embeddings, c.hidden_size),
                         (None, "vision_embed"), self.param_dtype)
    pos = position_embedding(table, patch_coords,
                             image_grid_sizes(patch_coords, patch_image),
                             c.position_side)
    x = x + pos.astype(x.dtype)
    cos, sin = layers.patch_rotary_cos_sin(patch_coords, c.head_dim,
                                           c.rope_theta)
    # Each image attends within itself (padding rows, image -1, to nothing).
    mask = attention.within_segments(patch_image, self.attention)

    n = len(c.deepstack_visual_indexes)
    taps = jnp.zeros((n,) + x.shape, x.dtype) if n else None
    block = VisionBlock
    if self.remat:
      block = nn.remat(block, prevent_cse=False)
    stack = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=c.depth, metadata_params={nn.PARTITION_NAME: "layers"})
    (x, taps), _ = stack(c, **kw, name="blocks")(
        (x, taps), jnp.arange(c.depth), cos, sin, mask)
    features = PatchMerger(c, **kw, name="merger")(x)
    if not n:
      return features, None
    mergers = nn.vmap(
        PatchMerger, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=0, out_axes=0, axis_size=n,
        metadata_params={nn.PARTITION_NAME: "layers"})
    deepstack = mergers(c, postshuffle=True, **kw,
                        name="deepstack_merger")(taps)
    return features, deepstack
