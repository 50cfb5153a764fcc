"""Synthetic GRPO batches of a given shape, for benchmarks and memory plans.

Rows are: each image as <|vision_start|> + its <|image_pad|> tokens +
<|vision_end|>, then random text up to the length; the second half of the row
is the completion (loss_mask 1). Random patches stand in for pixels; the
layout, positions and masks are what `evejax.processing.batching` builds for
real images, so the compiled step is the one a recipe runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from evejax.models.inputs import ModelInputs
from evejax.models.presets import ModelConfig
from evejax.processing import batching
from evejax.rl.learner import TrainBatch, targets_from_tokens


def patches_per_image(config: ModelConfig, side: int) -> int:
  """Patch rows of one side x side image (side a multiple of 28)."""
  unit = config.vision.patch_size * config.vision.spatial_merge_size
  if side % unit:
    raise ValueError(f"image side {side} must be a multiple of {unit}.")
  return (side // config.vision.patch_size) ** 2


def _check(config: ModelConfig, length: int, images: int, side: int) -> int:
  p = images * patches_per_image(config, side) if images else 0
  needed = images * (2 + p // images // config.vision.merge_unit) if images else 0
  if needed + 2 > length:
    raise ValueError(f"{images} image(s) of {side}px need {needed} tokens; the length "
                     f"{length} leaves no room for text. Raise the length or shrink images.")
  return p


def abstract_batch(config: ModelConfig, rows: int, length: int, *, images: int = 0,
                   image_side: int = 448, patches: int | None = None) -> TrainBatch:
  """ShapeDtypeStructs of a GRPO batch (nothing allocated).

  `patches`: patch rows per row (a patch bucket), instead of images x side.
  """
  p = _check(config, length, images, image_side) if patches is None else patches
  s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  i32, f32 = jnp.int32, jnp.float32
  inputs = ModelInputs(
      tokens=s((rows, length), i32), mask=s((rows, length), i32),
      positions=s((3, rows, length), i32),
      patches=s((rows, p, config.vision.patch_dim), f32),
      patch_coords=s((rows, p, 2), i32), patch_image=s((rows, p), i32),
      patch_window=s((rows, p), i32))
  return TrainBatch(inputs=inputs, targets=s((rows, length), i32),
                    loss_mask=s((rows, length), f32), old_logp=s((rows, length), f32),
                    advantages=s((rows,), f32))


def random_batch(config: ModelConfig, rows: int, length: int, *, images: int = 0,
                 image_side: int = 448, seed: int = 0) -> TrainBatch:
  """A host (numpy) GRPO batch of random tokens, patches and advantages."""
  p = _check(config, length, images, image_side)
  rng = np.random.default_rng(seed)
  g = image_side // config.vision.patch_size
  grid = (1, g, g)
  pads = g * g // config.vision.merge_unit
  vocab = config.text.vocab_size
  examples = []
  for _ in range(rows):
    tokens, imgs = [], []
    for _ in range(images):
      tokens += ([config.vision_start_token_id] + [config.image_token_id] * pads
                 + [config.vision_end_token_id])
      imgs.append((rng.normal(size=(g * g, config.vision.patch_dim)).astype(np.float32),
                   grid))
    special = {config.image_token_id, config.video_token_id,
               config.vision_start_token_id, config.vision_end_token_id}
    text = rng.integers(0, vocab, length - len(tokens))
    text = np.where(np.isin(text, list(special)), 0, text)
    tokens = np.array(tokens + list(text), np.int32)
    mask = (np.arange(length) >= length // 2).astype(np.int32)
    examples.append(batching.Example(tokens, imgs, mask))
  b = batching.collate(examples, vision=config.vision, image_token_id=config.image_token_id,
                       vision_start_id=config.vision_start_token_id, pad_id=0,
                       length_buckets=(length,), patch_buckets=(p,), padding="right")
  targets, loss_mask = targets_from_tokens(b.inputs.tokens, b.loss_mask)
  old = np.where(loss_mask > 0, -rng.exponential(2.0, loss_mask.shape), 0).astype(np.float32)
  return TrainBatch(inputs=b.inputs, targets=targets, loss_mask=loss_mask, old_logp=old,
                    advantages=rng.normal(size=rows).astype(np.float32))
