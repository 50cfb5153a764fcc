"""Procedural scenes whose content is known, and questions with answers by construction.

EvoLMM learns without labels, so to see whether it learns anything the tiny
preset measures the Solver on questions whose answers are known: held-out
ground-truth questions about these scenes, never seen in training. The same
templates give the short SFT warm start of both roles.

A `Scene` is a few flat shapes (circle, square, triangle) in well-separated
colours on a pale gradient, placed one per cell of a grid so that they never
overlap. `draw_scene` draws it without antialiasing, so every shape pixel has
its palette colour exactly and a test can count, colour and locate the shapes
on the pixels. Answers are one word or number.

Question templates (`TEMPLATES`; each returns None when its question would be
ambiguous in a scene, e.g. "what colour is the square" with two squares):

  count_kind       How many circles are there?               a number (0 allowed)
  count_color      How many red shapes are there?            a number
  count_all        How many shapes are there?                a number
  color_of_kind    What colour is the square?                a colour (one square)
  kind_of_color    What shape is the blue one?               a kind (one blue shape)
  left_of          Is the red circle left of the blue square?  yes / no
  above            Is the red circle above the blue square?    yes / no
  largest_color    What colour is the largest shape?         a colour (area 1.5x the next)
  leftmost_kind    What shape is furthest to the left?       a kind

Splits: scene i of split s is drawn from `default_rng([seed, s, i])`, so the
train and held-out streams are disjoint (two scenes with the same shapes at
the same sub-pixel positions do not arise). A recipe can also hold out whole
templates by passing `templates=`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from evejax.data import sources

# Saturated colours far from each other and from the pale background.
COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220),
          "yellow": (235, 200, 20), "purple": (140, 50, 190), "orange": (240, 130, 20)}
KINDS = ("circle", "square", "triangle")
SPLITS = {"train": 0, "heldout": 1}
DEFAULT_SIZE = (112, 112)
GRID = 3  # default layout: GRID x GRID cells, one shape at most in each
LARGEST_MARGIN = 1.5  # the largest shape's area over the next one's
POSITION_MARGIN = 0.1  # of the image side, for left-of / above questions


@dataclasses.dataclass(frozen=True)
class SceneShape:
  """A shape centred at (cx, cy) whose half-extent is `size` pixels."""
  kind: str
  color: str
  cx: float
  cy: float
  size: float

  @property
  def name(self) -> str:
    return f"{self.color} {self.kind}"

  @property
  def area(self) -> float:
    s = self.size
    return {"circle": math.pi * s * s, "square": 4 * s * s, "triangle": 2 * s * s}[self.kind]


@dataclasses.dataclass(frozen=True)
class Scene:
  width: int
  height: int
  background: tuple[tuple[int, int, int], tuple[int, int, int]]  # top and bottom colours
  shapes: tuple[SceneShape, ...]


def make_scene(rng: np.random.Generator, size: Sequence[int] = DEFAULT_SIZE,
               num_shapes: int | None = None, kinds: Sequence[str] = KINDS,
               colors: Sequence[str] = tuple(COLORS), grid: int = GRID) -> Scene:
  """A scene of `num_shapes` (default 2-5, at most `grid`^2) shapes, one per cell of a
  `grid` x `grid` layout; a shape's size scales with its cell (fewer cells: larger shapes)."""
  w, h = int(size[0]), int(size[1])
  cells = int(grid) * int(grid)
  if cells < 1:
    raise ValueError(f"grid={grid}: a scene's layout needs at least 1 x 1 cells.")
  n = (int(rng.integers(min(2, cells), min(5, cells) + 1)) if num_shapes is None
       else int(num_shapes))
  if not 1 <= n <= cells:
    raise ValueError(f"num_shapes={n}: a {grid} x {grid} scene holds 1..{cells} shapes.")
  cw, ch = w / grid, h / grid
  shapes = []
  for cell in rng.choice(cells, n, replace=False):
    s = float(rng.uniform(0.2, 0.42)) * min(cw, ch)
    room_x, room_y = cw / 2 - s - 1, ch / 2 - s - 1
    cx = (cell % grid + 0.5) * cw + float(rng.uniform(-room_x, room_x))
    cy = (cell // grid + 0.5) * ch + float(rng.uniform(-room_y, room_y))
    shapes.append(SceneShape(str(rng.choice(list(kinds))), str(rng.choice(list(colors))),
                             cx, cy, s))
  top, bottom = (tuple(int(v) for v in rng.integers(205, 251, 3)) for _ in range(2))
  return Scene(w, h, (top, bottom), tuple(shapes))


def draw_scene(scene: Scene) -> Image.Image:
  """The scene as an RGB image (no antialiasing: shape pixels are exact palette colours)."""
  t = np.linspace(0.0, 1.0, scene.height)[:, None, None]
  top, bottom = (np.array(c, np.float32) for c in scene.background)
  rows = (top * (1 - t) + bottom * t).round().astype(np.uint8)
  img = Image.fromarray(np.repeat(rows, scene.width, axis=1))
  draw = ImageDraw.Draw(img)
  for sh in scene.shapes:
    x, y, s, fill = sh.cx, sh.cy, sh.size, COLORS[sh.color]
    if sh.kind == "circle":
      draw.ellipse((x - s, y - s, x + s, y + s), fill=fill)
    elif sh.kind == "square":
      draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    else:
      draw.polygon([(x, y - s), (x + s, y + s), (x - s, y + s)], fill=fill)
  return img


# ---------------------------------------------------------------------------
# Question templates: (scene, rng) -> (question, answer, rationale) or None.

Asked = tuple[str, str, str]


def _unique(shapes, **attrs):
  found = [s for s in shapes if all(getattr(s, k) == v for k, v in attrs.items())]
  return found[0] if len(found) == 1 else None


def _count_kind(scene, rng):
  kind = str(rng.choice(KINDS))
  n = sum(s.kind == kind for s in scene.shapes)
  return f"How many {kind}s are there?", str(n), "Counting one kind of shape needs a " \
      "look at every shape."


def _count_color(scene, rng):
  color = str(rng.choice([s.color for s in scene.shapes]))
  n = sum(s.color == color for s in scene.shapes)
  return f"How many {color} shapes are there?", str(n), "It asks to find every shape of " \
      "one colour."


def _count_all(scene, rng):
  del rng
  return "How many shapes are there?", str(len(scene.shapes)), "Counting all the shapes " \
      "checks that none is missed."


def _color_of_kind(scene, rng):
  options = [k for k in KINDS if _unique(scene.shapes, kind=k)]
  if not options:
    return None
  kind = str(rng.choice(options))
  return f"What colour is the {kind}?", _unique(scene.shapes, kind=kind).color, \
      "It links a shape to its colour."


def _kind_of_color(scene, rng):
  options = sorted({s.color for s in scene.shapes if _unique(scene.shapes, color=s.color)})
  if not options:
    return None
  color = str(rng.choice(options))
  return f"What shape is the {color} one?", _unique(scene.shapes, color=color).kind, \
      "It links a colour to its shape."


def _pair(scene, rng, axis):
  named = [s for s in scene.shapes if _unique(scene.shapes, kind=s.kind, color=s.color)]
  if len(named) < 2:
    return None
  a, b = (named[int(i)] for i in rng.choice(len(named), 2, replace=False))
  side = scene.width if axis == "x" else scene.height
  da = (a.cx - b.cx) if axis == "x" else (a.cy - b.cy)
  if abs(da) < POSITION_MARGIN * side:
    return None
  return a, b, da < 0


def _left_of(scene, rng):
  pair = _pair(scene, rng, "x")
  if pair is None:
    return None
  a, b, yes = pair
  return f"Is the {a.name} to the left of the {b.name}?", "yes" if yes else "no", \
      "It asks where two shapes are relative to each other."


def _above(scene, rng):
  pair = _pair(scene, rng, "y")
  if pair is None:
    return None
  a, b, yes = pair
  return f"Is the {a.name} above the {b.name}?", "yes" if yes else "no", \
      "It asks where two shapes are relative to each other."


def _largest_color(scene, rng):
  del rng
  by_area = sorted(scene.shapes, key=lambda s: s.area, reverse=True)
  if len(by_area) < 2 or by_area[0].area < LARGEST_MARGIN * by_area[1].area:
    return None
  return "What colour is the largest shape?", by_area[0].color, \
      "Comparing sizes needs every shape measured by eye."


def _leftmost_kind(scene, rng):
  del rng
  by_x = sorted(scene.shapes, key=lambda s: s.cx)
  if len(by_x) < 2 or by_x[1].cx - by_x[0].cx < POSITION_MARGIN * scene.width:
    return None
  return "What shape is furthest to the left?", by_x[0].kind, \
      "It asks for the position of the shapes across the image."


TEMPLATES: dict[str, Callable[[Scene, np.random.Generator], Asked | None]] = {
    "count_kind": _count_kind, "count_color": _count_color, "count_all": _count_all,
    "color_of_kind": _color_of_kind, "kind_of_color": _kind_of_color,
    "left_of": _left_of, "above": _above, "largest_color": _largest_color,
    "leftmost_kind": _leftmost_kind,
}


@dataclasses.dataclass(frozen=True)
class SceneQuestion:
  """One ground-truth question about one scene.

  Attributes:
    key: a stable id, "<split>-<index>".
    split: "train" or "heldout".
    scene: what is drawn.
    template: the TEMPLATES name that asked.
    question, answer: the question and its one-word answer.
    rationale: why the question is worth asking (for the Proposer's target).
  """
  key: str
  split: str
  scene: Scene
  template: str
  question: str
  answer: str
  rationale: str

  def image(self) -> Image.Image:
    return draw_scene(self.scene)


def ask(scene: Scene, rng: np.random.Generator,
        templates: Sequence[str] | None = None) -> tuple[str, Asked] | None:
  """(template, (question, answer, rationale)) from the first of `templates`, in a
  random order, that applies to `scene`; None when none does."""
  names = list(templates or TEMPLATES)
  if unknown := [t for t in names if t not in TEMPLATES]:
    raise ValueError(f"Unknown scene question templates {unknown}; valid: {list(TEMPLATES)}.")
  for i in rng.permutation(len(names)):
    asked = TEMPLATES[names[int(i)]](scene, rng)
    if asked is not None:
      return names[int(i)], asked
  return None


def sample_questions(seed: int, count: int, *, split: str = "train", start: int = 0,
                     templates: Sequence[str] | None = None,
                     size: Sequence[int] = DEFAULT_SIZE,
                     num_shapes: int | None = None, grid: int = GRID,
                     max_tries: int = 100) -> list[SceneQuestion]:
  """Questions start..start+count-1 of `split`, one scene each.

  Question i draws its scene from `default_rng([seed, split id, i])` (the
  scene `SceneSource` yields at index i), and redraws the scene from the same
  generator while none of `templates` applies.
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown scene split {split!r}; valid: {list(SPLITS)}.")
  out = []
  for i in range(start, start + count):
    rng = np.random.default_rng([int(seed), SPLITS[split], i])
    for _ in range(max_tries):
      scene = make_scene(rng, size, num_shapes, grid=grid)
      asked = ask(scene, rng, templates)
      if asked is not None:
        break
    else:
      raise ValueError(f"No scene in {max_tries} draws fits the templates {templates}; "
                       "allow more shapes (num_shapes) or other templates.")
    template, (question, answer, rationale) = asked
    out.append(SceneQuestion(f"{split}-{i}", split, scene, template, question, answer,
                             rationale))
  return out


class SceneSource(sources.ImageSource):
  """The scenes of one split as an `ImageSource` (images for EvoLMM's Proposer)."""

  def __init__(self, count: int, *, split: str = "train", size: Sequence[int] = DEFAULT_SIZE,
               num_shapes: int | None = None, grid: int = GRID, **kwargs):
    super().__init__(**kwargs)
    if split not in SPLITS:
      raise ValueError(f"Unknown scene split {split!r}; valid: {list(SPLITS)}.")
    self.count, self.split, self.size = int(count), split, tuple(size)
    self.num_shapes, self.grid = num_shapes, grid

  def __len__(self) -> int:
    return self.count

  def _read(self, index: int) -> tuple[str, Image.Image]:
    rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
    return f"{self.split}-{index}", draw_scene(make_scene(rng, self.size, self.num_shapes,
                                                          grid=self.grid))
