"""M-RoPE position ids (temporal, height, width) and the rope delta.

Same values as transformers' `get_rope_index` of Qwen2.5-VL and of Qwen3-VL for
text and still images (the two differ only for video, which evejax does not
take; Qwen3-VL counts only <|image_pad|> as an image token, so
<|vision_start|>/<|vision_end|> are text, as here):
  * a text token takes t = h = w = the running position p, then p += 1;
  * an image's tokens (its merged grid gh/m x gw/m, raster order) take
    t = p + frame, h = p + row, w = p + col; afterwards p += max(gh, gw)/m,
    i.e. text continues at max(previous) + 1;
  * rope_delta = max position + 1 - T: while decoding, token number n (0-based
    over the whole sequence) sits at position n + rope_delta on all axes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mrope_positions(tokens: np.ndarray, grids: Sequence[Sequence[int]],
                    image_token_id: int, vision_start_id: int,
                    merge_size: int = 2) -> tuple[np.ndarray, int]:
  """Positions int32 [3, T] and rope_delta for one unpadded sequence.

  `grids` are the (t, h, w) patch grids of the images in `tokens`, in order;
  image k owns the next t*h*w/merge_size**2 <|image_pad|> tokens, which must
  follow a <|vision_start|> token.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be 1-D (one unpadded sequence), got shape "
                     f"{tokens.shape}.")
  n_tok = tokens.shape[0]
  is_img = tokens == image_token_id
  counts = [int(np.prod(g)) // (merge_size * merge_size) for g in grids]
  if int(is_img.sum()) != sum(counts):
    raise ValueError(
        f"The sequence has {int(is_img.sum())} image tokens but its grids "
        f"{[tuple(g) for g in grids]} need {sum(counts)}; image tokens must "
        "never be truncated or edited.")
  pos = np.empty((3, n_tok), np.int64)
  img_starts = np.flatnonzero(is_img & ~np.concatenate([[False], is_img[:-1]]))
  cur = 0  # next free position
  i = 0  # next token index
  k = 0  # next image
  # Walk image blocks; contiguous runs of pad tokens may hold several images.
  for run_start in img_starts:
    j = run_start
    while j < n_tok and is_img[j]:
      if j > 0 and not is_img[j - 1] and tokens[j - 1] != vision_start_id:
        raise ValueError(f"Image tokens at index {j} do not follow "
                         "<|vision_start|>; build prompts with encode_chat.")
      if not is_img[j:j + counts[k]].all():
        raise ValueError(
            f"Image {k} (grid {tuple(grids[k])}) needs {counts[k]} consecutive "
            f"image tokens from index {j}; the sequence has fewer.")
      n_text = j - i
      pos[:, i:j] = cur + np.arange(n_text)
      cur += n_text
      t, h, w = (int(v) for v in grids[k])
      gh, gw = h // merge_size, w // merge_size
      tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw),
                               indexing="ij")
      block = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + cur
      pos[:, j:j + counts[k]] = block
      cur += max(gh, gw)
      i = j = j + counts[k]
      k += 1
  pos[:, i:] = cur + np.arange(n_tok - i)
  rope_delta = int(pos.max()) + 1 - n_tok if n_tok else 0
  return pos.astype(np.int32), rope_delta
