"""Source images: procedurally generated scenes, folders, JSONL lists, TFDS datasets.

Every source is an `ImageSource`: an endless iterator of (id, PIL RGB image)
that walks its items in an order shuffled per epoch from a seed, and whose
position can be saved with `state()` and resumed with `restore()`. Pick one from
config with `make_source({"kind": "builtin" | "folder" | "jsonl" | "tfds", ...})`.

Shares of a multi-process run: the walk is one global sequence of positions,
the same on every process (it depends only on the seed). Each step `reserve`s
its positions on every process alike (so every process's `state()` is the
same), and each process reads only the items at the positions it owns
(`index_at` + `item`).
`size_of` tells an item's size without decoding it where the source can, for
host code that must draw the same random numbers for items it does not read.

Pixel limits: `max_decode_pixels` refuses, before decoding, any file declaring
more pixels (decompression bombs); `max_pixels` / `min_pixels` then rescale
each image, keeping its aspect ratio, into that pixel range (host RAM and image
tokens per image).

Malformed data. Any image is made RGB: CMYK, 16-bit and float (scaled, not
clipped to white), palette or grey with transparency (onto white), animated
(the first frame), EXIF-rotated (upright). An item that cannot be read at all
(a missing, empty, truncated or non-image file, a decompression bomb, an
aspect ratio over MAX_ASPECT) is skipped: `item(i)` serves the next readable
item in natural order instead, resized to the size `size_of(i)` reports (so
every process plans alike), logs the file once and counts the skip by reason
(`skipped`, and `take_skips()`, which the recipe runner adds to its counts as
`data/skipped_<reason>`). A
manifest's bad lines and a folder's non-image files are skipped and reported
when the source is built. What cannot go on (a missing folder or manifest, no
readable item at all, an unknown TFDS dataset) is one `SourceError` naming the
path and the fix.

Built-in scenes need no files or network: coloured shapes and digits on
gradient or textured backgrounds, so that edits are visible and questions about
them answerable. Photos shipped inside installed packages (matplotlib's or
scikit-image's sample data) can be mixed in with `photos=True`; none is
required.
"""
from __future__ import annotations

import abc
import collections
import colorsys
import importlib
import importlib.util
import json
import os
import pathlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

# Refuse images larger than this before decoding them (decompression bombs).
DEFAULT_MAX_DECODE_PIXELS = 40_000_000
# The Qwen-VL image processors refuse images more elongated than this.
MAX_ASPECT = 200
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Photos in installed packages, by (package, folder inside it, file names).
_BUNDLED_PHOTOS = (
    ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
    ("skimage", "data", ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                         "motorcycle_left.png", "hubble_deep_field.jpg", "color.png")),
)


class SourceError(ValueError):
  """An image source that cannot serve images; the message names the path and the fix."""


class ImageReadError(SourceError):
  """One image that cannot be read (`reason`: missing, empty, not_an_image, too_large,
  extreme_aspect, unreadable)."""

  def __init__(self, message: str, reason: str = "unreadable"):
    super().__init__(message)
    self.reason = reason


# Skipped reads of every source since the last `take_skips()`, by reason.
_SKIPS: collections.Counter = collections.Counter()
_SKIPS_LOCK = threading.Lock()


def take_skips() -> dict[str, int]:
  """Items skipped (by reason) since the last call; what a run adds to its counts."""
  with _SKIPS_LOCK:
    out = dict(_SKIPS)
    _SKIPS.clear()
  return out


def _to_8bit(image: Image.Image) -> Image.Image:
  """16-bit, 32-bit and float grey as 8-bit grey (PIL's convert would clip them to white)."""
  a = np.asarray(image, np.float64)
  if image.mode == "F":
    a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
  elif image.mode.startswith("I;16") or (a.size and a.max() > 255):
    a = a / 257.0
  return Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
  """RGB copy of `image`, upright; transparent pixels become white, not black."""
  image = ImageOps.exif_transpose(image)
  if image.mode in ("I", "F") or image.mode.startswith("I;16"):
    image = _to_8bit(image)
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
  return image.convert("RGB")


def fitted_size(size: tuple[int, int], max_pixels: int | None = None,
                min_pixels: int | None = None) -> tuple[int, int]:
  """The (width, height) `fit_pixels` gives an image of `size`."""
  w, h = int(size[0]), int(size[1])
  if max_pixels and w * h > max_pixels:
    scale = (max_pixels / (w * h)) ** 0.5
    return max(1, int(w * scale)), max(1, int(h * scale))
  if min_pixels and w * h < min_pixels:
    scale = (min_pixels / (w * h)) ** 0.5
    return int(np.ceil(w * scale)), int(np.ceil(h * scale))
  return w, h


def fit_pixels(image: Image.Image, max_pixels: int | None = None,
               min_pixels: int | None = None) -> Image.Image:
  """Rescales, keeping the aspect ratio, so that min_pixels <= width * height <= max_pixels.

  Either bound may be None (or 0) for none.
  """
  size = fitted_size(image.size, max_pixels, min_pixels)
  if size == image.size:
    return image
  return image.resize(size, Image.Resampling.LANCZOS)


def cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
  """Resizes to cover `size` = (width, height) and centre-crops to it exactly."""
  return ImageOps.fit(image, tuple(size), Image.Resampling.LANCZOS)


def read_image(path: str | os.PathLike,
               max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS) -> Image.Image:
  """Reads one image file as RGB; a clear ImageReadError names a bad or huge file."""
  if not os.path.isfile(path):
    raise ImageReadError(f"Image {path} does not exist. Fix the path or remove the entry.",
                         "missing")
  if os.path.getsize(path) == 0:
    raise ImageReadError(f"Image {path} is an empty file. Remove it or copy it again.", "empty")
  try:
    with Image.open(path) as im:
      w, h = im.size  # from the header: nothing is decoded yet
      if w * h > max_decode_pixels:
        raise ImageReadError(
            f"Image {path} declares {w}x{h} = {w * h} pixels, more than max_decode_pixels="
            f"{max_decode_pixels} (a guard against decompression bombs). Downscale the file, "
            "or raise max_decode_pixels in the image source config if it is genuine.",
            "too_large")
      return to_rgb(im)
  except ImageReadError:
    raise
  except Image.DecompressionBombError as e:
    raise ImageReadError(f"Image {path}: {e}. Downscale the file.", "too_large") from None
  except Image.UnidentifiedImageError:
    raise ImageReadError(f"{path} is not an image PIL can read. Remove it or convert it.",
                         "not_an_image") from None
  except Exception as e:  # noqa: BLE001 -- a damaged file fails in many ways inside PIL.
    raise ImageReadError(f"Cannot read image {path} ({type(e).__name__}: {e}); it is "
                         "truncated or damaged. Fix or remove the file.") from None


# ---------------------------------------------------------------------------
# The interface.


class ImageSource(abc.ABC):
  """Endless, seeded, resumable iterator of (id, PIL RGB image).

  Items are visited epoch after epoch; within epoch e the order is a
  permutation drawn from (seed, e), or the natural order if shuffle is off.
  `state()` is the number of items yielded so far; `restore()` resumes there.
  """

  def __init__(self, *, seed: int = 0, shuffle: bool = True, max_pixels: int | None = None,
               min_pixels: int | None = None,
               max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS):
    self.seed = int(seed)
    self.shuffle = bool(shuffle)
    self.max_pixels, self.min_pixels = max_pixels, min_pixels
    self.max_decode_pixels = int(max_decode_pixels)
    self._position = 0
    self._order_cache: tuple[int, np.ndarray] | None = None
    self.skipped: collections.Counter = collections.Counter()   # by reason
    self._unreadable: dict[int, ImageReadError] = {}   # this process's failed reads

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of distinct items (one epoch)."""

  @abc.abstractmethod
  def _read(self, index: int) -> tuple[str, Image.Image]:
    """Item `index` in natural order: its id and image (any mode)."""

  def _item(self, index: int) -> tuple[str, Image.Image]:
    if index in self._unreadable:
      raise self._unreadable[index]
    try:
      key, image = self._read(index)
      w, h = image.size
      if min(w, h) < 1:
        raise ImageReadError(f"Image {key} is {w}x{h}: it has no pixels.", "empty")
      if w * h > self.max_decode_pixels:
        raise ImageReadError(f"Image {key} has {w}x{h} pixels, more than max_decode_pixels="
                             f"{self.max_decode_pixels}. Raise it in the source config.",
                             "too_large")
      if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
        raise ImageReadError(f"Image {key} is {w}x{h}, more elongated than the image "
                             f"processors take (aspect ratio {MAX_ASPECT}); crop it.",
                             "extreme_aspect")
      return key, fit_pixels(to_rgb(image), self.max_pixels, self.min_pixels)
    except ImageReadError as e:
      logging.warning("Skipping an image (counted as data/skipped_%s): %s", e.reason, e)
      self._unreadable[index] = e
      raise

  def item(self, index: int) -> tuple[str, Image.Image]:
    """Item `index` in natural order, as RGB, rescaled into [min_pixels, max_pixels].

    An unreadable item is replaced by the next readable one and counted once,
    by its reason (see the module docstring); a source without any readable
    item is a SourceError.
    """
    return self._serve(index, count=True)

  def _serve(self, index: int, count: bool) -> tuple[str, Image.Image]:
    n = len(self)
    for offset in range(n):
      try:
        key, image = self._item((index + offset) % n)
      except ImageReadError as e:
        if offset == 0 and count:
          self.skipped[e.reason] += 1
          with _SKIPS_LOCK:
            _SKIPS[e.reason] += 1
        continue
      size = self.declared_size(index) if offset else None
      return key, (cover(image, size) if size and size != image.size else image)
    first = "; ".join(str(e) for e in list(self._unreadable.values())[:3])
    raise SourceError(f"None of the {n} images of this source can be read ({first}). "
                      "Fix the files or point the source at readable ones.")

  def declared_size(self, index: int) -> tuple[int, int] | None:
    """(width, height) `item(index)` will have, told without decoding; None where a
    source cannot tell it so."""
    return None

  def size_of(self, index: int) -> tuple[int, int]:
    """(width, height) of `item(index)`; sources that can tell it without decoding do."""
    return self.declared_size(index) or self._serve(index, count=False)[1].size

  def order(self, epoch: int) -> np.ndarray:
    """The permutation of item indices visited in `epoch`."""
    if self._order_cache is None or self._order_cache[0] != epoch:
      n = len(self)
      perm = (np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(n)
              if self.shuffle else np.arange(n))
      self._order_cache = (epoch, perm)
    return self._order_cache[1]

  def __iter__(self) -> Iterator[tuple[str, Image.Image]]:
    return self

  def __next__(self) -> tuple[str, Image.Image]:
    n = len(self)
    if n == 0:
      raise StopIteration
    epoch, i = divmod(self._position, n)
    out = self.item(int(self.order(epoch)[i]))
    self._position += 1
    return out

  def take(self, k: int) -> list[tuple[str, Image.Image]]:
    """The next k items."""
    return [next(self) for _ in range(k)]

  def index_at(self, position: int) -> int:
    """The item index at `position` of the walk (what `next` yields there)."""
    epoch, i = divmod(int(position), len(self))
    return int(self.order(epoch)[i])

  def reserve(self, k: int) -> range:
    """The next k positions of the walk, which moves past them without reading any."""
    start = self._position
    self._position += int(k)
    return range(start, start + int(k))

  def state(self) -> dict[str, int]:
    return {"position": self._position}

  def restore(self, state: Mapping[str, Any]) -> None:
    self._position = int(state["position"])


# ---------------------------------------------------------------------------
# Built-in scenes.


def _color(rng: np.random.Generator, sat=(0.55, 1.0), val=(0.55, 1.0)) -> tuple[int, ...]:
  r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
  return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
  """A two-colour linear gradient with an optional mild texture, never near-black."""
  c0 = np.array(_color(rng, (0.2, 0.8), (0.45, 0.95)), np.float32)
  c1 = np.array(_color(rng, (0.2, 0.8), (0.45, 0.95)), np.float32)
  theta = rng.uniform(0, 2 * np.pi)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  t = xx / w * np.cos(theta) + yy / h * np.sin(theta)
  t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
  img = c0 * (1 - t[..., None]) + c1 * t[..., None]
  texture = rng.integers(0, 4)
  if texture == 1:  # stripes
    period = rng.uniform(0.05, 0.15) * w
    img += 14 * np.sin(2 * np.pi * (xx * np.cos(-theta) + yy * np.sin(-theta)) / period)[..., None]
  elif texture == 2:  # checkerboard
    cell = max(2, int(rng.uniform(0.08, 0.2) * w))
    img += np.where(((xx // cell + yy // cell) % 2) == 0, 12.0, -12.0)[..., None]
  elif texture == 3:  # grain
    img += rng.normal(0, 7, size=img.shape)
  return np.clip(img, 30, 235).astype(np.uint8)


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (112, 112)) -> Image.Image:
  """One synthetic scene: 6-9 coloured shapes and 1-2 numbers on a background."""
  w, h = int(size[0]), int(size[1])
  ss = 2  # drawn at twice the size, then downsampled, for smooth edges
  W, H = w * ss, h * ss
  img = Image.fromarray(_background(rng, W, H))
  draw = ImageDraw.Draw(img)
  side = min(W, H)
  for _ in range(int(rng.integers(6, 10))):
    kind = rng.choice(["circle", "rectangle", "triangle", "line", "ellipse"])
    fill = _color(rng)
    outline = tuple(int(c * 0.6) for c in fill) if rng.random() < 0.5 else None
    s = rng.uniform(0.15, 0.4) * side
    cx, cy = rng.uniform(0.1, 0.9) * W, rng.uniform(0.1, 0.9) * H
    lw = max(1, int(side / 60))
    if kind == "circle":
      draw.ellipse((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), fill=fill, outline=outline,
                   width=lw)
    elif kind == "ellipse":
      draw.ellipse((cx - s / 2, cy - s / 4, cx + s / 2, cy + s / 4), fill=fill, outline=outline,
                   width=lw)
    elif kind == "rectangle":
      a = rng.uniform(0.5, 1.5)
      draw.rectangle((cx - s / 2, cy - s * a / 2, cx + s / 2, cy + s * a / 2), fill=fill,
                     outline=outline, width=lw)
    elif kind == "triangle":
      phase = rng.uniform(0, 2 * np.pi)
      pts = [(cx + s / 1.6 * np.cos(phase + k * 2 * np.pi / 3),
              cy + s / 1.6 * np.sin(phase + k * 2 * np.pi / 3)) for k in range(3)]
      draw.polygon(pts, fill=fill, outline=outline)
    else:
      phase = rng.uniform(0, np.pi)
      dx, dy = s * np.cos(phase), s * np.sin(phase)
      draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill, width=max(2, int(side / 30)))
  for _ in range(int(rng.integers(1, 3))):
    text = str(int(rng.integers(0, 100 if rng.random() < 0.4 else 10)))
    font = ImageFont.load_default(size=int(side * rng.uniform(0.16, 0.24)))
    dark = rng.random() < 0.5
    draw.text((rng.uniform(0.15, 0.85) * W, rng.uniform(0.15, 0.85) * H), text, font=font,
              anchor="mm", fill=(25, 25, 25) if dark else (250, 250, 250),
              stroke_width=max(1, int(side / 90)),
              stroke_fill=(250, 250, 250) if dark else (25, 25, 25))
  return img.resize((w, h), Image.Resampling.LANCZOS)


def bundled_photos() -> list[tuple[str, pathlib.Path]]:
  """(id, path) of sample photos shipped in installed packages; may be empty.

  Looks the packages up without importing them.
  """
  found = []
  for package, folder, names in _BUNDLED_PHOTOS:
    try:
      spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
      spec = None
    if spec is None or not spec.submodule_search_locations:
      continue
    root = pathlib.Path(list(spec.submodule_search_locations)[0]) / folder
    found += [(f"photo:{package}/{n}", root / n) for n in names if (root / n).is_file()]
  return found


class BuiltinSource(ImageSource):
  """`n` procedural scenes (scene i depends only on (seed, i)), plus bundled photos."""

  def __init__(self, n: int, size: Sequence[int] = (112, 112), *, seed: int = 0,
               photos: bool = False, **kw):
    super().__init__(seed=seed, **kw)
    if n < 0:
      raise ValueError(f"builtin image source: n={n} must be >= 0.")
    self.n, self.size = int(n), (int(size[0]), int(size[1]))
    self.photos = bundled_photos() if photos else []
    if n == 0 and not self.photos:
      raise ValueError("builtin image source has no images: set n > 0 (or photos=True "
                       "with matplotlib or scikit-image installed).")

  def __len__(self) -> int:
    return self.n + len(self.photos)

  def declared_size(self, index: int) -> tuple[int, int]:
    return fitted_size(self.size, self.max_pixels, self.min_pixels)   # photos are covered to it

  def _read(self, index: int) -> tuple[str, Image.Image]:
    if index < self.n:
      rng = np.random.default_rng([self.seed, index])
      return f"builtin:{self.seed}:{index}", render_scene(rng, self.size)
    key, path = self.photos[index - self.n]
    return key, cover(read_image(path, self.max_decode_pixels), self.size)


def builtin_images(n: int = 64, size: Sequence[int] = (112, 112), seed: int = 0,
                   **kw) -> BuiltinSource:
  """Procedural scenes of `size` = (width, height), deterministic per seed."""
  return BuiltinSource(n, size, seed=seed, **kw)


# ---------------------------------------------------------------------------
# Files on disk.


class FileListSource(ImageSource):
  """Images named by a list of (id, path)."""

  def __init__(self, entries: Sequence[tuple[str, pathlib.Path]], **kw):
    super().__init__(**kw)
    self.entries = list(entries)

  def __len__(self) -> int:
    return len(self.entries)

  def _read(self, index: int) -> tuple[str, Image.Image]:
    key, path = self.entries[index]
    return key, read_image(path, self.max_decode_pixels)

  def declared_size(self, index: int) -> tuple[int, int] | None:
    """From the file's header (EXIF rotation included); nothing is decoded."""
    path = self.entries[index][1]
    try:
      with Image.open(path) as im:
        w, h = im.size
        # EXIF orientations 5-8 are quarter turns: exif_transpose swaps the sides.
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
          w, h = h, w
    except Exception:  # noqa: BLE001 -- no readable header: the item names the problem
      return None
    if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
      return None   # skipped when read: its stand-in keeps its own shape
    return fitted_size((w, h), self.max_pixels, self.min_pixels)


def folder_images(path: str | os.PathLike, **kw) -> FileListSource:
  """Every image file under `path` (recursively), ids = paths relative to it."""
  root = pathlib.Path(path).expanduser()
  if not root.is_dir():
    raise SourceError(f"Image folder {root} does not exist or is not a directory; set "
                      "data.path to a folder of images.")
  every = [p for p in root.rglob("*") if p.is_file()]
  files = sorted(p for p in every if p.suffix.lower() in IMAGE_EXTENSIONS)
  if not files:
    raise SourceError(f"Image folder {root} holds no files ending in {IMAGE_EXTENSIONS}.")
  source = FileListSource([(str(p.relative_to(root)), p) for p in files], **kw)
  if others := sorted(str(p.relative_to(root)) for p in every if p not in set(files)):
    source.skipped["not_an_image"] += len(others)
    logging.warning("Image folder %s: ignoring %d files that are not images by their "
                    "extension (%s%s)", root, len(others), ", ".join(others[:5]),
                    ", ..." if len(others) > 5 else "")
  return source


def jsonl_images(path: str | os.PathLike, image_key: str = "image", **kw) -> FileListSource:
  """Images listed in a JSONL file: one {"image": path, ...} per line.

  Relative paths are relative to the JSONL file; an "id" field, if present,
  names the item (default: the image path as written).
  """
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise SourceError(f"Image list {path} does not exist; set data.path to a JSONL file "
                      f'with one {{"{image_key}": "path/to/image.png"}} per line.')
  entries, bad = [], []
  text = path.read_bytes().decode("utf-8-sig", errors="replace")
  for lineno, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      bad.append(f"{path}:{lineno} is not valid JSON ({e})")
      continue
    if not isinstance(record, dict) or not isinstance(record.get(image_key), str):
      bad.append(f"{path}:{lineno} has no string field {image_key!r} holding an image path")
      continue
    entries.append((str(record.get("id", record[image_key])), path.parent / record[image_key]))
  if not entries:
    raise SourceError(f"Image list {path} has no usable entries"
                      + (f" ({'; '.join(bad[:3])})" if bad else "") + f". Each line must be "
                      f'a JSON object with a string field "{image_key}" (a path relative to '
                      "the JSONL file).")
  source = FileListSource(entries, **kw)
  if bad:
    source.skipped["bad_manifest_line"] += len(bad)
    logging.warning("Image list %s: skipping %d bad lines: %s%s", path, len(bad),
                    "; ".join(bad[:5]), "; ..." if len(bad) > 5 else "")
  return source


# ---------------------------------------------------------------------------
# TFDS, through its array_record data sources (no TensorFlow).


class TfdsSource(ImageSource):
  """A TFDS dataset read by random access (`tfds.data_source`)."""

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
               image_key: str = "image", **kw):
    super().__init__(**kw)
    try:
      tfds = importlib.import_module("tensorflow_datasets")
    except ImportError as e:
      raise SourceError(
          f"Image source kind 'tfds' (dataset {name!r}) needs tensorflow_datasets and "
          "array_record: pip install tensorflow-datasets array-record. TensorFlow itself "
          "is not needed.") from e
    self.name, self.split, self.image_key = name, split, image_key
    try:
      self._data = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many kinds; all mean the same to the user.
      raise SourceError(
          f"Cannot open TFDS dataset {name!r} split {split!r} in data_dir={data_dir!r}: "
          f"{' '.join(str(e).split())[:400]}. Check data.name and data.split, and prepare "
          "it first (tfds build, with file_format=array_record).") from None

  def __len__(self) -> int:
    return len(self._data)

  def _read(self, index: int) -> tuple[str, Image.Image]:
    example = self._data[index]
    if self.image_key not in example:
      raise SourceError(f"TFDS dataset {self.name!r} has no feature {self.image_key!r}; "
                        f"it has {sorted(example)}. Set image_key in the source config.")
    key = f"tfds:{self.name}/{self.split}/{index}"
    array = np.asarray(example[self.image_key])
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    try:
      return key, Image.fromarray(array)
    except (TypeError, ValueError) as e:
      raise ImageReadError(f"{key}: an image array of shape {array.shape} and dtype "
                           f"{array.dtype} ({e}).") from None


def tfds_images(name: str, split: str = "train", data_dir: str | None = None, **kw) -> TfdsSource:
  """Images of TFDS dataset `name` (optional dependency, imported lazily)."""
  return TfdsSource(name, split, data_dir, **kw)


# ---------------------------------------------------------------------------

_KINDS = {"builtin": builtin_images, "folder": folder_images, "jsonl": jsonl_images,
          "tfds": tfds_images}
_COMMON_KEYS = {"seed", "shuffle", "max_pixels", "min_pixels", "max_decode_pixels"}
# A config block may hold the keys of every kind; only the chosen kind's are used.
_KIND_KEYS = {
    "builtin": {"n", "num_images", "size", "photos"},
    "folder": {"path"},
    "jsonl": {"path", "image_key"},
    "tfds": {"name", "split", "data_dir", "image_key"},
}


def make_source(cfg: Mapping[str, Any]) -> ImageSource:
  """An ImageSource from a config block: {"kind": ..., **arguments}.

  Keys: kind (builtin | folder | jsonl | tfds); builtin: n (or num_images),
  size ((width, height) or one side), photos; folder: path; jsonl: path,
  image_key; tfds: name, split, data_dir, image_key; every kind: seed, shuffle,
  max_pixels, min_pixels, max_decode_pixels. The block may also carry the
  other kinds' keys (one block in a config serves every kind); they are ignored.
  """
  cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  kind = cfg.pop("kind", None)
  if kind not in _KINDS:
    raise SourceError(f"Image source kind {kind!r} is unknown; use one of {sorted(_KINDS)}.")
  known = _COMMON_KEYS.union(*_KIND_KEYS.values())
  if unknown := sorted(set(cfg) - known):
    raise SourceError(f"Image source config has unknown keys {unknown}; valid keys are "
                      f"{sorted(known)}.")
  kw = {k: v for k, v in cfg.items() if k in _COMMON_KEYS | _KIND_KEYS[kind]}
  if kind == "builtin":
    if "num_images" in kw:
      kw["n"] = kw.pop("num_images")
    if isinstance(kw.get("size"), int):
      kw["size"] = (kw["size"], kw["size"])
  elif kind in ("folder", "jsonl") and not kw.get("path"):
    raise SourceError(f"Image source kind {kind!r} needs a path (set data.path).")
  elif kind == "tfds":
    if not kw.get("name"):
      raise SourceError("Image source kind 'tfds' needs a dataset name (set data.name).")
    kw["data_dir"] = kw.get("data_dir") or None
  return _KINDS[kind](**kw)
