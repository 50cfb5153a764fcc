"""Images -> normalised patch rows, as the Qwen-VL image processors make them.

The result equals transformers' `Qwen2VLImageProcessorPil` (the PIL/numpy
backend; the default torchvision one resizes with torch's bicubic and can
differ by a few grey levels): smart_resize to multiples of patch x merge
size, PIL bicubic resize on uint8, rescale by 1/255, normalise by mean/std, a
still image repeated to 2 frames, and rows in 2x2 merge-block order. The
settings are the family's (`ImageSettings`, `image_settings`):

| | Qwen2.5-VL | Qwen3-VL |
|---|---|---|
| patch, resize factor | 14, 28 | 16, 32 |
| row width | 3*2*14*14 = 1176 | 3*2*16*16 = 1536 |
| mean, std | CLIP | 0.5, 0.5 (x / 127.5 - 1) |
| min, max pixels | 56^2, 28^2 * 1280 | 256^2, 4096^2 |

A checkpoint's preprocessor_config.json, when it has one, overrides the
family's values (transformers' own class defaults are Qwen2-VL's, so a
processor built without it would be wrong for Qwen3-VL).

`load_image` opens untrusted files safely: it checks the pixel count from the
header before decoding, so a decompression bomb costs nothing.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os

import numpy as np
import PIL.Image
import PIL.ImageOps

from evejax.models import families

# transformers' defaults (OPENAI_CLIP_MEAN/STD, Qwen2VLImageProcessor.size).
CLIP_MEAN = families.CLIP_MEAN
CLIP_STD = families.CLIP_STD
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
# Refuse to decode images larger than this by default (~ 8k x 8k).
MAX_DECODE_PIXELS = 64_000_000


class ImageError(ValueError):
  """An image that cannot be used: unreadable, too large, or a bad array."""


def smart_resize(height: int, width: int, factor: int = 28,
                 min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
  """Target (height, width): multiples of `factor`, area within the bounds.

  Same arithmetic as transformers' `smart_resize`: round each side to the
  nearest multiple, then rescale both by one factor (floor when shrinking,
  ceil when growing) if the area falls outside [min_pixels, max_pixels].
  """
  if height <= 0 or width <= 0:
    raise ImageError(f"Image size {height}x{width} is empty.")
  if max(height, width) / min(height, width) > 200:
    raise ImageError(
        f"Image {height}x{width} has aspect ratio "
        f"{max(height, width) / min(height, width):.1f} > 200, which "
        "the Qwen-VL image processors cannot take; crop or pad it first.")
  h = round(height / factor) * factor
  w = round(width / factor) * factor
  if h * w > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h = max(factor, math.floor(height / beta / factor) * factor)
    w = max(factor, math.floor(width / beta / factor) * factor)
  elif h * w < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h = math.ceil(height * beta / factor) * factor
    w = math.ceil(width * beta / factor) * factor
  return h, w


def to_rgb(img: PIL.Image.Image | np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3]; transparency is composited onto white, like transformers.

  Arrays must be uint8, [H, W] or channels-last [H, W, 1|3|4].
  """
  if isinstance(img, PIL.Image.Image):
    if "A" in img.getbands() or img.info.get("transparency") is not None:
      rgba = img.convert("RGBA")
      white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
      img = PIL.Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"))
  if not isinstance(img, np.ndarray):
    raise ImageError(f"Expected a PIL image or a numpy array, got {type(img)}.")
  if img.dtype != np.uint8:
    raise ImageError(f"Image arrays must be uint8 (got {img.dtype}); convert "
                     "with (x * 255).round().clip(0, 255).astype(np.uint8).")
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
    raise ImageError(f"Image array of shape {img.shape} is not [H, W] or "
                     "channels-last [H, W, 1|3|4].")
  if img.shape[-1] == 1:
    return np.repeat(img, 3, axis=-1)
  if img.shape[-1] == 4:
    # transformers' numpy path: alpha blend onto white in float, then round.
    alpha = img[..., 3:4] / 255
    rgb = alpha * img[..., :3] + (1 - alpha) * 255
    return np.round(rgb).astype(np.uint8)
  return img


def preprocess_image(
    img: PIL.Image.Image | np.ndarray, *,
    min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
    patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2,
    mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD,
) -> tuple[np.ndarray, tuple[int, int, int]]:
  """Patch rows float32 [gh*gw, 3*T*p*p] and the grid (1, gh, gw).

  Rows come in merge-block order: the 4 patches of each 2x2 block are
  consecutive, blocks in raster order. Each row is laid out
  (channel, frame, y, x), the layout of the Conv3d patch embedding.
  """
  rgb = to_rgb(img)
  height, width = rgb.shape[:2]
  factor = patch_size * merge_size
  rh, rw = smart_resize(height, width, factor, min_pixels, max_pixels)
  resized = np.asarray(PIL.Image.fromarray(rgb).resize(
      (rw, rh), resample=PIL.Image.Resampling.BICUBIC))
  # Same dtype steps as transformers: float64 rescale, float32 normalise.
  x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
  x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  gh, gw = rh // patch_size, rw // patch_size
  m, p, c = merge_size, patch_size, x.shape[-1]
  x = x.reshape(gh // m, m, p, gw // m, m, p, c)
  # -> (block row, block col, row in block, col in block, channel, y, x)
  x = x.transpose(0, 3, 1, 4, 6, 2, 5)
  x = np.broadcast_to(x[:, :, :, :, :, None],
                      x.shape[:5] + (temporal_patch_size,) + x.shape[5:])
  patches = np.ascontiguousarray(x).reshape(
      gh * gw, c * temporal_patch_size * p * p)
  return patches, (1, gh, gw)


PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclasses.dataclass(frozen=True)
class ImageSettings:
  """What an image processor does to an image: the arguments of `preprocess_image`."""
  patch_size: int
  temporal_patch_size: int
  merge_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  min_pixels: int
  max_pixels: int

  def preprocess(self, img: PIL.Image.Image | np.ndarray
                 ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Patch rows and grid of one image (see `preprocess_image`)."""
    return preprocess_image(img, **dataclasses.asdict(self))

  def replace(self, **kw) -> "ImageSettings":
    return dataclasses.replace(self, **kw)


@functools.lru_cache(maxsize=16)
def _read_preprocessor_config(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ImageError(f"Cannot read {path} ({e}); re-download the checkpoint's "
                     "preprocessor_config.json or remove it.") from e


def image_settings(model_config, checkpoint_dir: str | None = None, *,
                   min_pixels: int | None = None,
                   max_pixels: int | None = None) -> ImageSettings:
  """The image processor of a model: its family's settings, then those of the
  checkpoint's preprocessor_config.json (if `checkpoint_dir` has one), then
  the given min/max pixels.

  The file's patch and merge sizes must be the model's (they fix the rows the
  vision tower reads); its `size` {shortest_edge, longest_edge} or
  min_pixels/max_pixels (which win, as in transformers) set the bounds.
  """
  v = model_config.vision
  family = families.of(model_config)
  settings = ImageSettings(
      patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
      merge_size=v.spatial_merge_size, mean=tuple(family.image_mean),
      std=tuple(family.image_std), min_pixels=family.min_pixels,
      max_pixels=family.max_pixels)
  path = checkpoint_dir and os.path.join(checkpoint_dir, PREPROCESSOR_FILE)
  if path and os.path.isfile(path):
    cfg = _read_preprocessor_config(os.path.abspath(path))
    for key, ours in (("patch_size", v.patch_size),
                      ("temporal_patch_size", v.temporal_patch_size),
                      ("merge_size", v.spatial_merge_size)):
      if key in cfg and cfg[key] != ours:
        raise ImageError(
            f"{path} has {key}={cfg[key]} but the model's vision tower takes "
            f"{ours}; the file belongs to another model. Use the checkpoint's "
            "own preprocessor_config.json.")
    size = cfg.get("size") or {}
    lo = cfg.get("min_pixels") or size.get("shortest_edge")
    hi = cfg.get("max_pixels") or size.get("longest_edge")
    settings = settings.replace(
        mean=tuple(cfg.get("image_mean", settings.mean)),
        std=tuple(cfg.get("image_std", settings.std)),
        min_pixels=int(lo or settings.min_pixels),
        max_pixels=int(hi or settings.max_pixels))
  if min_pixels is not None:
    settings = settings.replace(min_pixels=int(min_pixels))
  if max_pixels is not None:
    settings = settings.replace(max_pixels=int(max_pixels))
  if not 0 < settings.min_pixels <= settings.max_pixels:
    raise ImageError(f"Image bounds min_pixels={settings.min_pixels}, "
                     f"max_pixels={settings.max_pixels}: need 0 < min <= max.")
  return settings


def num_image_tokens(grid: tuple[int, int, int], merge_size: int = 2) -> int:
  """<|image_pad|> tokens for an image grid: t*h*w / merge_size**2."""
  t, h, w = grid
  return t * h * w // (merge_size * merge_size)


def load_image(source: str | os.PathLike | bytes, *,
               max_pixels: int = MAX_DECODE_PIXELS) -> PIL.Image.Image:
  """Opens an image file or encoded bytes as an RGB PIL image.

  The pixel count is read from the header and checked against `max_pixels`
  before anything is decoded. EXIF orientation is applied (as transformers'
  `load_image` does); animated images give their first frame; transparency
  is composited onto white.
  """
  name = (f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray))
          else os.fspath(source))
  try:
    fp = (io.BytesIO(source) if isinstance(source, (bytes, bytearray))
          else open(source, "rb"))
  except OSError as e:
    raise ImageError(f"Cannot open image {name}: {e}.") from e
  with fp:
    try:
      with PIL.Image.open(fp) as im:
        w, h = im.size
        if w * h > max_pixels:
          raise ImageError(
              f"Image {name} is {w}x{h} = {w * h} pixels, over the limit of "
              f"{max_pixels}; shrink it or raise max_pixels.")
        im.seek(0)
        im.load()
        im = PIL.ImageOps.exif_transpose(im)
        return PIL.Image.fromarray(to_rgb(im))
    except ImageError:
      raise
    except PIL.Image.DecompressionBombError as e:
      raise ImageError(f"Image {name} is too large to decode safely ({e}); "
                       "shrink it first.") from e
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError,
            EOFError) as e:
      raise ImageError(
          f"Cannot read image {name} ({type(e).__name__}: {e}); the file is "
          "not an image PIL can decode or it is truncated.") from e
