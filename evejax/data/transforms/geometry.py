"""Geometric families: crops, rotations, jigsaws, flips, shifts, warps.

Program text uses 4-space indentation on purpose: it is what the Challenger
reads and imitates, and Qwen models write Python that way.
"""
from __future__ import annotations

import numpy as np

from evejax.data.transforms import sampling
from evejax.data.transforms.family import Family


def _crop_args(rng, w, h):
  # Outputs must stay >= 64x64-ish pixels (EVE's minimum), so small images crop big.
  lo = min(0.8, max(0.3, 72 / min(w, h)))
  hi = min(0.92, lo + 0.25)
  return [{"bbox_2d": b} for b in sampling.spread_boxes(rng, w, h, lo, hi)]


CROP_BOX = Family(
    name="crop_box",
    source='''
def edit_image(img: Image.Image, bbox_2d: list) -> Image.Image:
    return img.crop(bbox_2d)
''',
    sample_args=_crop_args,
    description="crops the box bbox_2d = [left, top, right, bottom] in pixels.",
)


# The relative form (0-1000 on each axis), as EVE prompts Qwen3-VL.
CROP_BOX_RELATIVE = Family(
    name="crop_box_relative",
    source='''
def edit_image(img: Image.Image, bbox_2d: list) -> Image.Image:
    w, h = img.size
    return img.crop([round(v * s / 1000) for v, s in zip(bbox_2d, (w, h, w, h))])
''',
    sample_args=lambda rng, w, h: [
        {"bbox_2d": [round(v * 1000 / s) for v, s in zip(a["bbox_2d"], (w, h, w, h))]}
        for a in _crop_args(rng, w, h)],
    description="crops the box bbox_2d = [left, top, right, bottom] in 0-1000 coordinates.",
)


def _rotate_args(rng, w, h):
  del w, h
  options = list(range(30, 360, 15))
  for _ in range(1000):
    angles = sampling.pick(rng, options)
    gaps = [min(abs(a - b), 360 - abs(a - b)) for a in angles for b in angles if a != b]
    if min(gaps) >= 40:
      return [{"angle": int(a)} for a in angles]
  raise AssertionError("unreachable: 4 angles 40 degrees apart always exist")


ROTATE = Family(
    name="rotate",
    source='''
def edit_image(img: Image.Image, angle: float) -> Image.Image:
    return img.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
''',
    sample_args=_rotate_args,
    description="rotates the image counter-clockwise by angle degrees, growing the canvas.",
)


def _jigsaw_args(n, min_moved):
  def sample(rng, w, h):
    del w, h
    return [{"N": n, "order": p} for p in sampling.permutations(rng, n * n, 4, min_moved)]
  return sample


JIGSAW_2X2 = Family(
    name="jigsaw_2x2",
    source='''
def edit_image(img: Image.Image, N: int, order: list) -> Image.Image:
    w, h = img.size
    bw, bh = w // N, h // N
    out = Image.new("RGB", (bw * N, bh * N))
    for pos, src in enumerate(order):
        sx, sy = (src % N) * bw, (src // N) * bh
        tile = img.crop((sx, sy, sx + bw, sy + bh))
        out.paste(tile, ((pos % N) * bw, (pos // N) * bh))
    return out
''',
    sample_args=_jigsaw_args(2, 3),
    description="cuts the image into an N x N grid and places tile order[i] at position i "
                "(row-major).",
)


JIGSAW_3X3 = Family(
    name="jigsaw_3x3",
    source='''
def edit_image(img: Image.Image, grid: int, perm: list) -> Image.Image:
    pixels = np.asarray(img.convert("RGB"))
    th, tw = pixels.shape[0] // grid, pixels.shape[1] // grid
    tiles = [pixels[r * th:(r + 1) * th, c * tw:(c + 1) * tw]
             for r in range(grid) for c in range(grid)]
    rows = [np.concatenate([tiles[i] for i in perm[r * grid:(r + 1) * grid]], axis=1)
            for r in range(grid)]
    return Image.fromarray(np.concatenate(rows, axis=0))
''',
    sample_args=lambda rng, w, h: [
        {"grid": 3, "perm": p} for p in sampling.permutations(rng, 9, 4, 6)],
    description="splits the image into a grid x grid puzzle and lays the tiles out in the "
                "row-major order given by perm.",
)


FLIP = Family(
    name="flip",
    source='''
def edit_image(img: Image.Image, mode: str) -> Image.Image:
    if mode == "horizontal":
        return ImageOps.mirror(img)
    if mode == "vertical":
        return ImageOps.flip(img)
    if mode == "both":
        return img.transpose(Image.Transpose.ROTATE_180)
    return img.transpose(Image.Transpose.TRANSPOSE)
''',
    sample_args=lambda rng, w, h: [
        {"mode": m} for m in sampling.pick(rng, ["horizontal", "vertical", "both", "transpose"])],
    description="mirrors the image left-right, top-bottom, both, or across its main diagonal.",
)


def _roll_args(rng, w, h):
  steps = [(fx, fy) for fx in (0, 0.25, 0.5, 0.75) for fy in (0, 0.25, 0.5, 0.75)
           if (fx, fy) != (0, 0)]
  return [{"dx": int(w * (fx + rng.uniform(-0.04, 0.04))) % w,
           "dy": int(h * (fy + rng.uniform(-0.04, 0.04))) % h}
          for fx, fy in sampling.pick(rng, steps)]


ROLL = Family(
    name="roll",
    source='''
def edit_image(img: Image.Image, dx: int, dy: int) -> Image.Image:
    pixels = np.asarray(img)
    return Image.fromarray(np.roll(pixels, (dy, dx), axis=(0, 1)))
''',
    sample_args=_roll_args,
    description="shifts the image right by dx and down by dy pixels, wrapping around the edges.",
)


def _zoom_args(rng, w, h):
  factors = sampling.ladder(rng, 1.6, 3.2, 4, decimals=1)
  centers = [[int(w * (q[0] + rng.uniform(0.35, 0.65)) / 2),
              int(h * (q[1] + rng.uniform(0.35, 0.65)) / 2)]
             for q in sampling.pick(rng, sampling.QUADRANTS)]
  return [{"center": c, "factor": f} for c, f in zip(centers, factors)]


ZOOM = Family(
    name="zoom",
    source='''
def edit_image(img: Image.Image, center: list, factor: float) -> Image.Image:
    w, h = img.size
    cw, ch = w / factor, h / factor
    left = min(max(center[0] - cw / 2, 0), w - cw)
    top = min(max(center[1] - ch / 2, 0), h - ch)
    return img.resize((w, h), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
''',
    sample_args=_zoom_args,
    description="magnifies the image by factor around the pixel center, keeping its size.",
)


MIRROR_HALF = Family(
    name="mirror_half",
    source='''
def edit_image(img: Image.Image, keep: str) -> Image.Image:
    w, h = img.size
    out = img.copy()
    if keep == "left":
        out.paste(ImageOps.mirror(img.crop((0, 0, w // 2, h))), (w - w // 2, 0))
    elif keep == "right":
        out.paste(ImageOps.mirror(img.crop((w - w // 2, 0, w, h))), (0, 0))
    elif keep == "top":
        out.paste(ImageOps.flip(img.crop((0, 0, w, h // 2))), (0, h - h // 2))
    else:
        out.paste(ImageOps.flip(img.crop((0, h - h // 2, w, h))), (0, 0))
    return out
''',
    sample_args=lambda rng, w, h: [
        {"keep": k} for k in sampling.pick(rng, ["left", "right", "top", "bottom"])],
    description="keeps one half of the image and replaces the other half with its mirror "
                "image, making the picture symmetric.",
)


STRETCH = Family(
    name="stretch",
    source='''
def edit_image(img: Image.Image, scale_x: float, scale_y: float) -> Image.Image:
    w, h = img.size
    return img.resize((round(w * scale_x), round(h * scale_y)), Image.Resampling.BICUBIC)
''',
    # Area stays within 0.6x..1.5x so outputs respect EVE's pixel bounds.
    sample_args=lambda rng, w, h: [
        {"scale_x": sx, "scale_y": sy} for sx, sy in sampling.pick(
            rng, [(1.5, 1.0), (1.0, 1.5), (0.6, 1.0), (1.0, 0.6), (1.5, 0.75), (0.75, 1.5),
                  (1.25, 0.6), (0.6, 1.25)])],
    description="resizes the image by scale_x horizontally and scale_y vertically.",
)


def _shear_args(rng, w, h):
  del w, h
  options = [(s, 0.0) for s in (-0.5, -0.25, 0.25, 0.5)] + [
      (0.0, s) for s in (-0.5, -0.25, 0.25, 0.5)]
  return [{"shear_x": sx, "shear_y": sy} for sx, sy in sampling.pick(rng, options)]


SHEAR = Family(
    name="shear",
    source='''
def edit_image(img: Image.Image, shear_x: float, shear_y: float) -> Image.Image:
    w, h = img.size
    matrix = (1, shear_x, -shear_x * h / 2, shear_y, 1, -shear_y * w / 2)
    return img.transform((w, h), Image.Transform.AFFINE, matrix,
                         resample=Image.Resampling.BICUBIC, fillcolor="white")
''',
    sample_args=_shear_args,
    description="slants the image about its centre: shear_x tilts columns, shear_y tilts "
                "rows; uncovered corners become white.",
)


def _swap_args(rng, w, h):
  bw, bh = int(w * 0.38), int(h * 0.38)
  corners = {q: [int((w / 2) * q[0] + rng.uniform(0, w / 2 - bw)),
                 int((h / 2) * q[1] + rng.uniform(0, h / 2 - bh))] for q in sampling.QUADRANTS}
  pairs = [(a, b) for i, a in enumerate(sampling.QUADRANTS) for b in sampling.QUADRANTS[i + 1:]]
  out = []
  for a, b in sampling.pick(rng, pairs):
    if rng.random() < 0.5:
      a, b = b, a
    (ax, ay), (bx, by) = corners[a], corners[b]
    out.append({"box_a": [ax, ay, ax + bw, ay + bh], "box_b": [bx, by, bx + bw, by + bh]})
  return out


SWAP_REGIONS = Family(
    name="swap_regions",
    source='''
def edit_image(img: Image.Image, box_a: list, box_b: list) -> Image.Image:
    patch_a = img.crop(box_a)
    patch_b = img.crop(box_b)
    img.paste(patch_b, (box_a[0], box_a[1]))
    img.paste(patch_a, (box_b[0], box_b[1]))
    return img
''',
    sample_args=_swap_args,
    description="exchanges the contents of two equally sized boxes [left, top, right, bottom].",
)


def _slice_args(rng, w, h):
  del h
  return [{"strips": int(s), "offset": int(w * rng.uniform(0.25, 0.5))}
          for s in sampling.pick(rng, [2, 3, 4, 5, 6, 8])]


SLICE_SHIFT = Family(
    name="slice_shift",
    source='''
def edit_image(img: Image.Image, strips: int, offset: int) -> Image.Image:
    pixels = np.array(img)
    edges = np.linspace(0, pixels.shape[0], strips + 1).astype(int)
    for i in range(1, strips, 2):
        band = pixels[edges[i]:edges[i + 1]]
        pixels[edges[i]:edges[i + 1]] = np.roll(band, offset, axis=1)
    return Image.fromarray(pixels)
''',
    sample_args=_slice_args,
    description="cuts the image into horizontal strips and slides every second strip right "
                "by offset pixels, wrapping around.",
)


FAMILIES = (CROP_BOX, ROTATE, JIGSAW_2X2, JIGSAW_3X3, FLIP, ROLL, ZOOM, MIRROR_HALF,
            STRETCH, SHEAR, SWAP_REGIONS, SLICE_SHIFT)
