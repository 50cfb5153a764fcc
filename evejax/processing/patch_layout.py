"""Per-patch metadata for the vision tower (host side, numpy only).

For the patch rows of an example's images, in the 2x2 merge-block order that
transformers' Qwen2VLImageProcessor emits, gives each row's (row, col) in its
image grid, its image index and its attention-window id. The model masks
attention with these instead of permuting rows (see evejax.models.inputs).
A family without window attention (Qwen3-VL: `window_merged` is None) has one
window per image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from evejax.models.presets import Qwen3VisionConfig, VisionConfig


def patch_layout(grid_thw: Sequence[tuple[int, int, int]],
                 vision: VisionConfig | Qwen3VisionConfig
                 ) -> dict[str, np.ndarray]:
  """Layout of the concatenated patch rows of several still images.

  Args:
    grid_thw: per image (t, h, w) in patches, as the image processor reports;
      t must be 1 (still images), h and w multiples of the merge size.
    vision: the tower's config (merge size, window size if it has windows).

  Returns:
    'coords' int32 [N, 2] (row, col) of each patch in its image grid;
    'image' int32 [N] image index; 'window' int32 [N] window id, unique across
    the images (window_merged x window_merged merged units per window,
    counted row-major per image, partial windows at the right/bottom edges);
    N = sum(t * h * w).
  """
  m = vision.spatial_merge_size
  wm = vision.window_merged
  coords, image, window = [], [], []
  window_offset = 0
  for i, thw in enumerate(grid_thw):
    t, h, w = (int(v) for v in thw)
    if t != 1:
      raise ValueError(
          f"patch_layout: image {i} has grid_thw {tuple(thw)}; only still "
          f"images (t=1) are supported. Video needs per-frame attention.")
    if h % m or w % m or h <= 0 or w <= 0:
      raise ValueError(
          f"patch_layout: image {i} grid {h}x{w} patches is not a positive "
          f"multiple of spatial_merge_size={m}; resize with smart_resize.")
    mh, mw = h // m, w // m
    # Rows ordered (block_row, block_col, sub_row, sub_col).
    br, bc, sr, sc = np.meshgrid(np.arange(mh), np.arange(mw), np.arange(m),
                                 np.arange(m), indexing="ij")
    br, bc = br.ravel(), bc.ravel()
    coords.append(np.stack([br * m + sr.ravel(), bc * m + sc.ravel()], -1))
    image.append(np.full(br.size, i))
    if wm is None:  # no window attention: the image is the window
      window.append(np.full(br.size, window_offset))
      window_offset += 1
      continue
    windows_w = -(-mw // wm)
    window.append(window_offset + (br // wm) * windows_w + bc // wm)
    window_offset += -(-mh // wm) * windows_w
  if not coords:
    return {"coords": np.zeros((0, 2), np.int32),
            "image": np.zeros((0,), np.int32),
            "window": np.zeros((0,), np.int32)}
  return {"coords": np.concatenate(coords).astype(np.int32),
          "image": np.concatenate(image).astype(np.int32),
          "window": np.concatenate(window).astype(np.int32)}
