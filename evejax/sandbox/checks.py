"""Output validation: plain functions of pixels, thresholds from `CheckConfig`.

The EVE rules (from the published reward code): an output is invalid when it
has too many or too few pixels, fewer than 10% opaque pixels (alpha >= 10),
more than 10% near-black pixels among the opaque ones (Rec.709 luma <= 5;
75% allowed when the program rotates), or when two outputs are near-identical
(both sides within 5% and equal perceptual hash). The function text must stay
under 2000 characters. SVG renders (MM-Zero) are rejected when a side exceeds
16384 px or the aspect ratio exceeds 100.

Every threshold is a field so that recipes can set them from ml_collections.
Images read from bytes go through `decode_image`, which checks the declared
size before decoding any pixels (decompression bombs).
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Mapping, Sequence
import warnings

import imagehash
import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class CheckConfig:
  """Validity thresholds (defaults follow the published EVE / MM-Zero code)."""
  min_pixels: int = 64 * 64
  max_pixels: int = 2_000_000
  opaque_alpha: int = 10              # alpha >= this counts as opaque
  min_opaque_fraction: float = 0.10
  near_black_luma: float = 5.0        # Rec.709 luma <= this is near-black
  max_near_black_fraction: float = 0.10
  rotation_near_black_fraction: float = 0.75  # when the program rotates
  rotation_marker: str = ".rotate("
  distinct_size_ratio: float = 0.95   # compare hashes when sides are this close
  require_distinct: bool = True
  max_function_chars: int = 2000
  reject_randomness: bool = True
  reject_file_saving: bool = True
  max_decode_pixels: int = 40_000_000  # any image decoded from bytes
  max_side: int = 16384                # SVG / plot renders
  max_aspect: float = 100.0
  max_render_pixels: int = 4_000_000   # bigger renders are scaled down

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | Any | None) -> "CheckConfig":
    """Builds from a dict or ml_collections.ConfigDict; unknown keys fail."""
    if cfg is None:
      return cls()
    if isinstance(cfg, cls):
      return cfg
    items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - names)
    if unknown:
      raise ValueError(
          f"CheckConfig: unknown keys {unknown}; valid keys are {sorted(names)}")
    return cls(**items)


class ImageTooLarge(ValueError):
  """An encoded image declares more pixels than allowed."""


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
  """Decodes an image file to a uint8 RGB array, refusing bombs.

  The header is parsed first and the declared size checked before any pixel
  is decompressed; PIL's own bomb warning is turned into an error too.
  """
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
      im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
      raise ImageTooLarge(str(e)) from None
    w, h = im.size
    if w * h > max_pixels or w <= 0 or h <= 0:
      raise ImageTooLarge(
          f"image declares {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    try:
      im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
      raise ImageTooLarge(str(e)) from None
  return to_rgb_array(im)


def to_rgb_array(im: Image.Image) -> np.ndarray:
  if im.mode != "RGB":
    im = im.convert("RGB")
  return np.asarray(im, dtype=np.uint8)


def pixel_count_problem(shape: Sequence[int], cfg: CheckConfig) -> str | None:
  h, w = int(shape[0]), int(shape[1])
  if h * w > cfg.max_pixels:
    return f"{w}x{h} has {w * h} pixels, more than max_pixels={cfg.max_pixels}"
  if h * w < cfg.min_pixels:
    return f"{w}x{h} has {w * h} pixels, fewer than min_pixels={cfg.min_pixels}"
  return None


def opaque_mask(img: np.ndarray, cfg: CheckConfig) -> np.ndarray:
  if img.ndim == 3 and img.shape[2] == 4:
    return img[..., 3] >= cfg.opaque_alpha
  return np.ones(img.shape[:2], dtype=bool)


def opaque_fraction(img: np.ndarray, cfg: CheckConfig) -> float:
  if not (img.ndim == 3 and img.shape[2] == 4):
    return 1.0
  return float(opaque_mask(img, cfg).mean())


_LUMA = (0.2126, 0.7152, 0.0722)  # Rec.709


def near_black_fraction(img: np.ndarray, cfg: CheckConfig) -> float:
  """Share of near-black pixels among the opaque ones (0 if none is opaque).

  Luma is computed in float32 as the published check does, but only for the
  pixels that can pass: all weights are positive, so luma <= limit needs
  green <= limit / 0.7152 (with a margin for rounding). Same answer, without
  converting the whole image to float.
  """
  alpha = img.ndim == 3 and img.shape[2] == 4
  valid = opaque_mask(img, cfg) if alpha else None
  n = int(np.count_nonzero(valid)) if alpha else img.shape[0] * img.shape[1]
  if n == 0:
    return 0.0
  limit = cfg.near_black_luma
  flat = img.reshape(-1, 1 if img.ndim == 2 else img.shape[2])
  rgb = [flat[:, min(c, flat.shape[1] - 1)] for c in range(3)]
  # An integer bound keeps the comparison in uint8.
  bound = math.floor(limit / _LUMA[1] * (1 + 1e-6) + 1e-6)
  if bound < 0:
    return 0.0
  maybe = None if valid is None else valid.reshape(-1)
  if bound < 255:
    maybe = rgb[1] <= np.uint8(bound)
    if valid is not None:
      maybe &= valid.reshape(-1)
  if maybe is not None:
    rows = np.flatnonzero(maybe)
    rgb = [channel[rows] for channel in rgb]
  r, g, b = (channel.astype(np.float32) for channel in rgb)
  luma = _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b
  return float(np.count_nonzero(luma <= limit)) / n


def image_problem(img: np.ndarray, cfg: CheckConfig,
                  rotation: bool = False) -> str | None:
  """First reason why one output image is invalid, or None."""
  problem = pixel_count_problem(img.shape, cfg)
  if problem:
    return problem
  frac = opaque_fraction(img, cfg)
  if frac < cfg.min_opaque_fraction:
    return (f"only {frac:.1%} of pixels are opaque; at least "
            f"{cfg.min_opaque_fraction:.0%} must be")
  limit = (cfg.rotation_near_black_fraction if rotation
           else cfg.max_near_black_fraction)
  frac = near_black_fraction(img, cfg)
  if frac > limit:
    return f"{frac:.1%} of opaque pixels are near-black; the limit is {limit:.0%}"
  return None


def phash(img: np.ndarray) -> imagehash.ImageHash:
  return imagehash.phash(Image.fromarray(np.ascontiguousarray(img[..., :3])))


def near_duplicates(images: Sequence[np.ndarray],
                    cfg: CheckConfig) -> list[tuple[int, int]]:
  """Pairs (i, j) whose sizes are within the ratio and whose pHash is equal."""
  hashes: dict[int, imagehash.ImageHash] = {}
  pairs = []
  for j, b in enumerate(images):
    for i in range(j):
      a = images[i]
      rw = min(a.shape[1], b.shape[1]) / max(a.shape[1], b.shape[1])
      rh = min(a.shape[0], b.shape[0]) / max(a.shape[0], b.shape[0])
      if rw < cfg.distinct_size_ratio or rh < cfg.distinct_size_ratio:
        continue
      for k in (i, j):
        if k not in hashes:
          hashes[k] = phash(images[k])
      if hashes[i] == hashes[j]:
        pairs.append((i, j))
  return pairs


def outputs_problem(images: Sequence[np.ndarray], cfg: CheckConfig,
                    rotation: bool = False) -> str | None:
  """All EVE output checks; the first failure as a sentence, or None."""
  for k, img in enumerate(images):
    problem = image_problem(img, cfg, rotation)
    if problem:
      return f"output {k}: {problem}"
  if cfg.require_distinct:
    pairs = near_duplicates(images, cfg)
    if pairs:
      i, j = pairs[0]
      return f"outputs {i} and {j} are near-identical (same perceptual hash)"
  return None


def render_size_problem(width: float, height: float,
                        cfg: CheckConfig) -> str | None:
  """MM-Zero's render limits on the intrinsic size of an SVG / plot."""
  if not (width > 0 and height > 0):
    return f"size {width}x{height} is empty or undefined"
  if max(width, height) > cfg.max_side:
    return f"size {width:g}x{height:g} has a side over {cfg.max_side} px"
  if max(width, height) / min(width, height) > cfg.max_aspect:
    return (f"size {width:g}x{height:g} has an aspect ratio over "
            f"{cfg.max_aspect:g}")
  return None


def render_scale(width: float, height: float, cfg: CheckConfig) -> float:
  """Scale (<= 1) that brings a render within max_render_pixels."""
  pixels = width * height
  if pixels <= cfg.max_render_pixels:
    return 1.0
  return (cfg.max_render_pixels / pixels) ** 0.5
