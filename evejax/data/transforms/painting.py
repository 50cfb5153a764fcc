"""A painting world for EVE's small experiments: each edit paints one named colour
over one part of the image, so the four outputs differ in colour and in place.

For models trained from scratch (`configs/eve.py:painted`): the colour a program
paints is a visual cue that a tiny VLM learns to name (EvoLMM's grounded world),
and the held-out family, `column` (a vertical band), shares the two primitives (a
colour, a band) with the training ones, `paint_quadrant` and `stripe`. Loaded as `eve.library="evejax.data.transforms.painting:FAMILIES"`;
`FOUR_COLOUR_FAMILIES` paints from 4 colours only, so every program's 4 argument
sets use all of them (with `eve.option_order="sorted"` each colour keeps its letter).
"""
from __future__ import annotations

from evejax.data.transforms import sampling
from evejax.data.transforms.family import Family

# Bright, far apart and never near-black (the validity check).
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange")


def _colour_and(key: str, places, colours):
  """4 distinct colours, each with a distinct `key` from `places`."""
  def sample(rng, w, h):
    del w, h
    return [{"color": c, key: p} for c, p in zip(sampling.pick(rng, colours),
                                                 sampling.pick(rng, places))]
  return sample


def families(colours: tuple[str, ...] = COLOURS) -> tuple[Family, ...]:
  """The three painting families (quadrant, horizontal band, vertical band),
  their colours drawn from `colours` (at least 4)."""
  paint_quadrant = Family(
      name="paint_quadrant",
      source='''
def edit_image(img: Image.Image, color: str, quadrant: int) -> Image.Image:
    w, h = img.size
    x, y = (quadrant % 2) * w // 2, (quadrant // 2) * h // 2
    ImageDraw.Draw(img).rectangle([x, y, x + w // 2, y + h // 2], fill=color)
    return img
''',
      sample_args=_colour_and("quadrant", (0, 1, 2, 3), colours),
      description="fills quadrant `quadrant` (0 top-left, 1 top-right, 2 bottom-left, "
                  "3 bottom-right) with the colour `color`.")
  stripe = Family(
      name="stripe",
      source='''
def edit_image(img: Image.Image, color: str, row: int) -> Image.Image:
    w, h = img.size
    ImageDraw.Draw(img).rectangle([0, row * h // 4, w, (row + 1) * h // 4], fill=color)
    return img
''',
      sample_args=_colour_and("row", (0, 1, 2, 3), colours),
      description="paints band `row` of four horizontal bands (0 at the top) in the colour "
                  "`color`.")
  column = Family(
      name="column",
      source='''
def edit_image(img: Image.Image, color: str, col: int) -> Image.Image:
    w, h = img.size
    ImageDraw.Draw(img).rectangle([col * w // 4, 0, (col + 1) * w // 4, h], fill=color)
    return img
''',
      sample_args=_colour_and("col", (0, 1, 2, 3), colours),
      description="paints band `col` of four vertical bands (0 at the left) in the colour "
                  "`color`.")
  return paint_quadrant, stripe, column


FAMILIES = families()
FOUR_COLOUR_FAMILIES = families(COLOURS[:4])
