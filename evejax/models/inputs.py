"""The arrays the model consumes: one contract between host processing and device.

Host code (`evejax.processing`) builds these with numpy, padded to static
buckets; the model (`evejax.models.vlm`) is mechanical given them. Every field
has a batch axis (`ModelInputs.batch_axes`: axis 1 of positions, else 0) so all
of it shards over the batch.

Images: each example's images are flattened, in order, into one patch sequence
of P rows (P a bucket, multiple of 4). Rows come in 2x2 merge-block order, as
transformers' Qwen2VLImageProcessor emits them, so the merger groups 4
consecutive rows. Attention in the vision tower is masked, not permuted:
window blocks attend within (same image, same window); full blocks within the
same image; padding rows (image id -1) attend to nothing and are ignored.
The k-th <|image_pad|> token of an example receives merged feature k. The
same fields serve every family: Qwen3-VL has no windows (one window per
image, not read) and recovers each image's grid from the coords of its rows.
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import numpy as np


@flax.struct.dataclass
class ModelInputs:
  # Text.
  tokens: jax.Array      # int32 [B, T]; padding = any id, masked out by `mask`
  mask: jax.Array        # int32 [B, T]; 1 real token, 0 padding (left or right)
  positions: jax.Array   # int32 [3, B, T]; M-RoPE (temporal, height, width)
  # Vision (P may be 0 for text-only batches; shapes stay static per bucket).
  patches: jax.Array       # float [B, P, patch_dim]; normalised pixels
  patch_coords: jax.Array  # int32 [B, P, 2]; (row, col) of the patch in its image grid
  patch_image: jax.Array   # int32 [B, P]; image index within the example, -1 padding
  patch_window: jax.Array  # int32 [B, P]; window id, unique within the example, -1 padding

  # The one field whose batch axis is not 0: M-RoPE positions are [3, B, T].
  _BATCH_AXIS = {"positions": 1}

  @classmethod
  def batch_axes(cls) -> "ModelInputs":
    """A ModelInputs of ints: the batch axis of each field."""
    return cls(**{f.name: cls._BATCH_AXIS.get(f.name, 0) for f in dataclasses.fields(cls)})

  def take_rows(self, rows) -> "ModelInputs":
    """Host copy with the given rows (an index array) of every field."""
    return ModelInputs(**{
        f.name: np.take(np.asarray(getattr(self, f.name)), rows,
                        axis=self._BATCH_AXIS.get(f.name, 0))
        for f in dataclasses.fields(self)})

  @property
  def batch_size(self) -> int:
    return self.tokens.shape[0]

  @property
  def length(self) -> int:
    return self.tokens.shape[1]

  @property
  def num_patches(self) -> int:
    return self.patches.shape[1]
