"""Examples -> padded, bucketed `ModelInputs` (numpy), and onto the mesh.

An `Example` is one unpadded sequence: its token ids (image placeholders
already expanded, e.g. by `chat.encode_chat`), its images as (patch rows,
grid) pairs from `images.preprocess_image`, and optionally a loss mask.

`collate` pads a list of examples to static shapes and returns a `Batch`:

  batch.inputs        ModelInputs, what the model consumes:
    tokens   [B, T]     pad_id where padding
    mask     [B, T]     1 real token, 0 padding
    positions[3, B, T]  M-RoPE ids of each unpadded sequence (0 on padding),
                        so left padding does not shift positions
    patches  [B, P, patch_dim] (1176 Qwen2.5-VL, 1536 Qwen3-VL),
    patch_coords [B, P, 2], patch_image [B, P],
    patch_window [B, P] from `patch_layout`; padding rows: zeros, image -1,
                        window -1, coords 0
  batch.loss_mask     [B, T] int32, the example's loss mask placed like its
                      tokens (0 on padding and where none was given). For a
                      prompt + completion, 1 on the completion tokens: the
                      learner scores token t from the logits at t - 1.
  batch.lengths       [B] int32, real tokens per row.
  batch.rope_deltas   [B] int32, max position + 1 - length (positions.py).
                      While sampling, the n-th token of a row (0-based, over
                      its real tokens, generated ones included) has position
                      n + rope_delta on all three axes.
  batch.example_mask  [B] int32, 1 for the given examples, 0 for filler rows
                      added to reach a batch bucket. A filler row holds one
                      real pad token (mask 1, loss 0) so that no attention row
                      is empty; drop its outputs with example_mask.

Shapes come from buckets: T is the smallest length bucket that fits the
longest example, P the smallest patch bucket (multiples of 4, 0 allowed for
text-only batches) that fits the most patches, B the smallest batch bucket
(if given) that fits the number of examples. So the number of compiled
shapes is at most len(length_buckets) * len(patch_buckets) *
len(batch_buckets). Nothing is ever truncated: an example whose tokens or
patches exceed the largest bucket raises `PromptTooLongError`, which a
recipe catches to drop the example with a counted reason (`check_fits` tests
one example up front).

`padding='left'` right-aligns every row (prompts for the sampler: all rows
end at T, generation appends); `'right'` left-aligns them (the learner).

`make_batch` returns only `batch.inputs`. `to_device` places a ModelInputs or
Batch on a mesh, splitting the batch axis.
"""
from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any, Literal

import flax.struct
import jax
import numpy as np

from evejax.models import inputs as inputs_lib
from evejax.models import presets
from evejax.processing import patch_layout as patch_layout_lib
from evejax.processing import positions as positions_lib

Grid = tuple[int, int, int]


class PromptTooLongError(ValueError):
  """An example longer than the largest bucket (tokens or image patches)."""

  def __init__(self, kind: str, length: int, limit: int,
               index: int | None = None):
    self.kind, self.length, self.limit, self.index = kind, length, limit, index
    which = "An example" if index is None else f"Example {index}"
    unit = "tokens (image tokens included)" if kind == "tokens" else "patches"
    bucket = "length_buckets" if kind == "tokens" else "patch_buckets"
    super().__init__(
        f"{which} has {length} {unit}, more than the largest of the "
        f"{bucket} ({limit}). It is never truncated: drop the example, lower "
        f"max_pixels, or add a larger bucket.")


@dataclasses.dataclass
class Example:
  """One unpadded sequence with its images (in placeholder order)."""
  tokens: np.ndarray  # int [T]
  images: Sequence[tuple[np.ndarray, Grid]] = ()  # ([t*h*w, patch_dim], (t, h, w))
  loss_mask: np.ndarray | None = None  # int/bool [T]; 1 = token in the loss

  @property
  def num_tokens(self) -> int:
    return int(np.shape(self.tokens)[0])

  @property
  def num_patches(self) -> int:
    return sum(int(np.shape(p)[0]) for p, _ in self.images)


@flax.struct.dataclass
class Batch:
  inputs: inputs_lib.ModelInputs
  loss_mask: Any     # int32 [B, T]
  lengths: Any       # int32 [B]
  rope_deltas: Any   # int32 [B]
  example_mask: Any  # int32 [B]


def bucket_for(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n; ValueError naming both when none is."""
  fits = [b for b in buckets if b >= n]
  if not fits:
    raise ValueError(f"{n} is larger than every bucket in {sorted(buckets)}.")
  return min(fits)


def _check_buckets(name: str, buckets: Sequence[int] | None, multiple: int = 1,
                   allow_zero: bool = False):
  if buckets is None:
    return
  if not buckets:
    raise ValueError(f"{name} is empty; give at least one size.")
  for b in buckets:
    if (not isinstance(b, (int, np.integer)) or b < (0 if allow_zero else 1)
        or b % multiple):
      raise ValueError(
          f"{name} must hold {'non-negative' if allow_zero else 'positive'} "
          f"integers{f' divisible by {multiple}' if multiple > 1 else ''}; "
          f"got {list(buckets)}.")


def check_fits(example: Example, *, length_buckets: Sequence[int],
               patch_buckets: Sequence[int], index: int | None = None):
  """Raises PromptTooLongError if `example` exceeds the largest buckets."""
  if example.num_tokens > max(length_buckets):
    raise PromptTooLongError("tokens", example.num_tokens,
                             max(length_buckets), index)
  if example.num_patches > max(patch_buckets):
    raise PromptTooLongError("patches", example.num_patches,
                             max(patch_buckets), index)


def collate(examples: Sequence[Example], *, vision: presets.VisionConfig,
            image_token_id: int, vision_start_id: int, pad_id: int,
            length_buckets: Sequence[int], patch_buckets: Sequence[int],
            batch_buckets: Sequence[int] | None = None,
            padding: Literal["left", "right"] = "left",
            patch_dtype: Any = np.float32) -> Batch:
  """Pads `examples` to bucketed shapes; see the module docstring."""
  if padding not in ("left", "right"):
    raise ValueError(f"padding must be 'left' or 'right', got {padding!r}.")
  if not examples:
    raise ValueError("collate needs at least one example.")
  _check_buckets("length_buckets", length_buckets)
  _check_buckets("patch_buckets", patch_buckets, vision.merge_unit,
                 allow_zero=True)
  _check_buckets("batch_buckets", batch_buckets)
  n_ex = len(examples)
  if batch_buckets is not None and n_ex > max(batch_buckets):
    raise ValueError(f"{n_ex} examples exceed the largest batch bucket "
                     f"{max(batch_buckets)}; split them or add a bucket.")

  rows = []
  for i, ex in enumerate(examples):
    tokens = np.asarray(ex.tokens)
    if tokens.ndim != 1 or tokens.shape[0] == 0:
      raise ValueError(f"Example {i}: tokens must be a non-empty 1-D array, "
                       f"got shape {tokens.shape}.")
    check_fits(ex, length_buckets=length_buckets,
               patch_buckets=patch_buckets, index=i)
    grids = []
    for k, (p, g) in enumerate(ex.images):
      g = tuple(int(v) for v in g)
      if len(g) != 3 or np.shape(p) != (int(np.prod(g)), vision.patch_dim):
        raise ValueError(
            f"Example {i}, image {k}: patches of shape {np.shape(p)} do not "
            f"match grid {g} (expected ({int(np.prod(g))}, "
            f"{vision.patch_dim})); use images.preprocess_image.")
      grids.append(g)
    pos, delta = positions_lib.mrope_positions(
        tokens, grids, image_token_id, vision_start_id,
        vision.spatial_merge_size)
    if ex.loss_mask is not None and np.shape(ex.loss_mask) != tokens.shape:
      raise ValueError(f"Example {i}: loss_mask shape "
                       f"{np.shape(ex.loss_mask)} != tokens {tokens.shape}.")
    rows.append((tokens, pos, delta, grids, ex))

  t_len = bucket_for(max(r[0].shape[0] for r in rows), length_buckets)
  p_len = bucket_for(max(r[4].num_patches for r in rows), patch_buckets)
  b = n_ex if batch_buckets is None else bucket_for(n_ex, batch_buckets)

  tokens = np.full((b, t_len), pad_id, np.int32)
  mask = np.zeros((b, t_len), np.int32)
  positions = np.zeros((3, b, t_len), np.int32)
  loss_mask = np.zeros((b, t_len), np.int32)
  lengths = np.ones((b,), np.int32)  # filler rows: one token
  deltas = np.zeros((b,), np.int32)
  example_mask = np.zeros((b,), np.int32)
  patches = np.zeros((b, p_len, vision.patch_dim), patch_dtype)
  coords = np.zeros((b, p_len, 2), np.int32)
  image = np.full((b, p_len), -1, np.int32)
  window = np.full((b, p_len), -1, np.int32)

  filler = slice(t_len - 1, t_len) if padding == "left" else slice(0, 1)
  mask[n_ex:, filler] = 1
  for i, (tok, pos, delta, grids, ex) in enumerate(rows):
    n = tok.shape[0]
    sl = slice(t_len - n, t_len) if padding == "left" else slice(0, n)
    tokens[i, sl] = tok
    mask[i, sl] = 1
    positions[:, i, sl] = pos
    if ex.loss_mask is not None:
      loss_mask[i, sl] = np.asarray(ex.loss_mask).astype(np.int32)
    lengths[i] = n
    deltas[i] = delta
    example_mask[i] = 1
    if grids:
      n_p = ex.num_patches
      patches[i, :n_p] = np.concatenate([p for p, _ in ex.images])
      layout = patch_layout_lib.patch_layout(grids, vision)
      coords[i, :n_p] = layout["coords"]
      image[i, :n_p] = layout["image"]
      window[i, :n_p] = layout["window"]

  inputs = inputs_lib.ModelInputs(
      tokens=tokens, mask=mask, positions=positions, patches=patches,
      patch_coords=coords, patch_image=image, patch_window=window)
  return Batch(inputs=inputs, loss_mask=loss_mask, lengths=lengths,
               rope_deltas=deltas, example_mask=example_mask)


def make_batch(examples: Sequence[Example], *, vision: presets.VisionConfig,
               image_token_id: int, vision_start_id: int, pad_id: int,
               length_buckets: Sequence[int], patch_buckets: Sequence[int],
               batch_buckets: Sequence[int] | None = None,
               padding: Literal["left", "right"] = "left",
               patch_dtype: Any = np.float32) -> inputs_lib.ModelInputs:
  """`collate(...).inputs`: just the model's inputs."""
  return collate(examples, vision=vision, image_token_id=image_token_id,
                 vision_start_id=vision_start_id, pad_id=pad_id,
                 length_buckets=length_buckets, patch_buckets=patch_buckets,
                 batch_buckets=batch_buckets, padding=padding,
                 patch_dtype=patch_dtype).inputs


def _batch_axes(tree: Any) -> Any:
  """Which axis of each leaf is the batch (`ModelInputs.batch_axes`)."""
  if isinstance(tree, Batch):
    return Batch(inputs=_batch_axes(tree.inputs), loss_mask=0, lengths=0,
                 rope_deltas=0, example_mask=0)
  if isinstance(tree, inputs_lib.ModelInputs):
    return inputs_lib.ModelInputs.batch_axes()
  return jax.tree.map(lambda _: 0, tree)


def to_device(tree: Any, sharding: Any) -> Any:
  """Puts a ModelInputs / Batch (or any batch-major pytree) on devices.

  `sharding` is either a pytree of shardings matching `tree`, or one
  NamedSharding for a batch-major array (e.g. `parallel.batch_sharding(mesh,
  1)`): its first spec entry then splits every leaf's batch axis (axis 1 of
  positions, axis 0 elsewhere) and the other axes stay whole.

  Single-process placement: under multi-host JAX each process would pass its
  own share and use `jax.make_array_from_process_local_data` instead.
  """
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return jax.device_put(tree, sharding)
  mesh, spec = sharding.mesh, sharding.spec
  batch_spec = spec[0] if len(spec) else None
  names = ((batch_spec,) if isinstance(batch_spec, str)
           else tuple(batch_spec or ()))
  n_shards = int(np.prod([mesh.shape[a] for a in names])) if names else 1

  def put(x, axis):
    if x.shape[axis] % n_shards:
      raise ValueError(
          f"Batch size {x.shape[axis]} is not divisible by the {n_shards} "
          f"shards of mesh axes {names}; use batch_buckets that are "
          "multiples of it.")
    parts = [None] * x.ndim
    parts[axis] = batch_spec
    return jax.device_put(x, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(*parts)))

  return jax.tree.map(put, tree, _batch_axes(tree))
