"""Drawing families: boxes, masks, numbered markers, arrows, a spotlight.

Several of these draw on `img` in place, like the published highlight-box seed;
the EVE harness hands every call a fresh copy of the source image.
"""
from __future__ import annotations

from evejax.data.transforms import sampling
from evejax.data.transforms.family import Family

_COLORS = ("red", "blue", "lime", "magenta", "orange", "cyan", "yellow")


HIGHLIGHT_BOX = Family(
    name="highlight_box",
    source='''
def edit_image(img: Image.Image, bbox_2d: list) -> Image.Image:
    draw = ImageDraw.Draw(img)
    draw.rectangle(bbox_2d, outline="red", width=max(4, min(img.size) // 25))
    return img
''',
    sample_args=lambda rng, w, h: [
        {"bbox_2d": b} for b in sampling.spread_boxes(rng, w, h, 0.3, 0.5)],
    description="outlines the box bbox_2d = [left, top, right, bottom] (pixels) in red.",
)


HIGHLIGHT_BOX_RELATIVE = Family(
    name="highlight_box_relative",
    source='''
def edit_image(img: Image.Image, bbox_2d: list) -> Image.Image:
    w, h = img.size
    box = [round(v * s / 1000) for v, s in zip(bbox_2d, (w, h, w, h))]
    ImageDraw.Draw(img).rectangle(box, outline="red", width=max(4, min(img.size) // 25))
    return img
''',
    sample_args=lambda rng, w, h: [
        {"bbox_2d": b} for b in sampling.spread_boxes(rng, 1000, 1000, 0.3, 0.5)],
    description="outlines the box bbox_2d = [left, top, right, bottom] (0-1000 coordinates) "
                "in red.",
)


def _mask_args(rng, w, h):
  grid = 3 if min(w, h) < 300 else int(rng.choice([3, 4]))
  color = str(rng.choice(["gray", "white", "orange", "magenta", "cyan"]))
  cells = sampling.pick(rng, list(range(grid * grid)))
  return [{"grid": grid, "cell": int(c), "color": color} for c in cells]


MASK_CELL = Family(
    name="mask_cell",
    source='''
def edit_image(img: Image.Image, grid: int, cell: int, color: str) -> Image.Image:
    w, h = img.size
    row, col = divmod(cell, grid)
    box = (col * w // grid, row * h // grid,
           (col + 1) * w // grid - 1, (row + 1) * h // grid - 1)
    ImageDraw.Draw(img).rectangle(box, fill=color)
    return img
''',
    sample_args=_mask_args,
    description="paints one cell (row-major index cell) of a grid x grid layout with a solid "
                "color.",
)


NUMBERED_MARKERS = Family(
    name="numbered_markers",
    source='''
def edit_image(img: Image.Image, points: list) -> Image.Image:
    draw = ImageDraw.Draw(img)
    r = max(7, min(img.size) // 16)
    font = ImageFont.load_default(size=int(r * 1.5))
    for number, (x, y) in enumerate(points, start=1):
        draw.ellipse((x - r, y - r, x + r, y + r), fill="yellow", outline="black")
        draw.text((x, y), str(number), fill="black", font=font, anchor="mm")
    return img
''',
    sample_args=lambda rng, w, h: [
        {"points": sampling.spread_points(rng, w, h, 3)} for _ in range(4)],
    description="draws yellow discs numbered 1, 2, 3, ... at the given pixel points.",
)


def _arrow_args(rng, w, h):
  color = str(rng.choice(_COLORS[:4]))
  quads = sampling.QUADRANTS
  pairs = [(a, b) for i, a in enumerate(quads) for b in quads[i + 1:]]

  def point(q):
    return [int(w * (q[0] + rng.uniform(0.3, 0.7)) / 2),
            int(h * (q[1] + rng.uniform(0.3, 0.7)) / 2)]

  out = []
  for a, b in sampling.pick(rng, pairs):
    if rng.random() < 0.5:
      a, b = b, a
    out.append({"start": point(a), "end": point(b), "color": color})
  return out


DRAW_ARROW = Family(
    name="draw_arrow",
    source='''
def edit_image(img: Image.Image, start: list, end: list, color: str) -> Image.Image:
    draw = ImageDraw.Draw(img)
    width = max(5, min(img.size) // 16)
    draw.line([tuple(start), tuple(end)], fill=color, width=width)
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    size = width * 4
    head = [tuple(end)]
    for side in (-0.5, 0.5):
        head.append((end[0] - size * math.cos(angle + side),
                     end[1] - size * math.sin(angle + side)))
    draw.polygon(head, fill=color)
    return img
''',
    sample_args=_arrow_args,
    description="draws an arrow from pixel start to pixel end.",
)


def _spotlight_args(rng, w, h):
  radii = sampling.ladder(rng, 0.18, 0.36, 4, decimals=3)
  quads = sampling.pick(rng, sampling.QUADRANTS)
  return [{"center": [int(w * (q[0] + rng.uniform(0.35, 0.65)) / 2),
                      int(h * (q[1] + rng.uniform(0.35, 0.65)) / 2)],
           "radius": int(r * min(w, h))} for q, r in zip(quads, radii)]


SPOTLIGHT = Family(
    name="spotlight",
    source='''
def edit_image(img: Image.Image, center: list, radius: int) -> Image.Image:
    x, y = center
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    dimmed = ImageEnhance.Brightness(img).enhance(0.45)
    return Image.composite(img, dimmed, mask)
''',
    sample_args=_spotlight_args,
    description="darkens everything outside the circle of the given pixel center and radius.",
)


FAMILIES = (HIGHLIGHT_BOX, MASK_CELL, NUMBERED_MARKERS, DRAW_ARROW, SPOTLIGHT)
