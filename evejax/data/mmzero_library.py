"""MM-Zero's warm-start library: procedural proposals with the picture that answers them.

No pretrained model reaches a CPU test machine, so the tiny MM-Zero preset
first teaches its three roles by SFT on proposals of our own. Each
`LibraryItem` is what a perfect Proposer and Coder would produce together: a
content type, a caption that says everything needed to draw the picture, an
easy and a hard question with their answers, and the picture itself as a
`Drawing`, from which both backends' code is emitted: `item.svg` (the SVG
backend, MM-Zero's final pipeline) and `item.plot_program` (a PIL program
following the sandbox's `PlotJob` contract: `draw()` returns the image). One
list of shapes feeds both, so the two renderings show the same content.

Answers are correct by construction: every kind draws its data from a numpy
Generator, computes the answers from that data, and records the data in
`item.facts` so that a test can recompute them or find them on the pixels.
Answers are one number or one word.

Kinds (topic key of `recipes.mmzero_tasks.TOPICS`, content type, what the size
knob `n` counts; mean SVG characters and tiny-tokenizer tokens at the default
n and canvas, over 50 seeds):

  kind            topic       type        n                        chars  tokens
  bar_chart       charts      data_chart  bars (2-6, default 3)      508     250
  pie_chart       charts      data_chart  slices (2-5, default 3)    416     235
  line_chart      trends      data_chart  points (3-7, default 4)    671     346
  table           structure   table       rows = columns (2-3, 2)    769     419
  timeline        structure   timeline    events (2-4, default 3)    547     297
  right_triangle  geometry    geometry    (one triangle)             302     146
  circles         quantities  geometry    circles (1-3, default 2)   260     122
  text_cards      text        other       cards (1-3, default 2)     314     139
  shape_count     shapes      geometry    shapes (2-9, default 4)    312     148
  dot_sequence    logic       other       boxes (3-4, default 3)     819     367

`TINY_KINDS` are the kinds under 600 characters, short enough for a tiny model
to learn to write. Every kind also takes a canvas size.

Train / held-out: an item belongs to the held-out split when a hash of its
caption falls in one residue class out of `HELDOUT_MODULUS`, so the two splits
never share a picture whatever seeds draw them (`sample_items(..., split=)`
redraws until an item of the asked split comes up).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from collections.abc import Callable, Sequence
from typing import Any, Union
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

# Named colours that SVG (CSS) and PIL read alike and that are far apart in
# RGB, so that a picture's parts can be told apart by colour. No gray: an
# antialiased one-pixel black line renders as gray.
PALETTE = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 128, 0),
           "orange": (255, 165, 0), "purple": (128, 0, 128), "brown": (165, 42, 42),
           "teal": (0, 128, 128)}
COLORS = tuple(PALETTE)
FONT_SIZE = 10  # px, set once on the root <svg> (with centred anchoring); texts inherit it
HELDOUT_MODULUS = 5  # one caption hash class in 5 is held out (20%)
SPLITS = ("train", "heldout")


# ---------------------------------------------------------------------------
# Shapes, and the two ways of writing them down.


@dataclasses.dataclass(frozen=True)
class Rect:
  x: int
  y: int
  w: int
  h: int
  fill: str = "none"
  stroke: str | None = None


@dataclasses.dataclass(frozen=True)
class Circle:
  cx: int
  cy: int
  r: int
  fill: str
  stroke: str | None = None


@dataclasses.dataclass(frozen=True)
class Line:
  x1: int
  y1: int
  x2: int
  y2: int
  stroke: str = "black"
  width: int = 1


@dataclasses.dataclass(frozen=True)
class Polygon:
  points: tuple[tuple[int, int], ...]
  fill: str = "none"
  stroke: str | None = None


@dataclasses.dataclass(frozen=True)
class Polyline:
  points: tuple[tuple[int, int], ...]
  stroke: str = "black"
  width: int = 2


@dataclasses.dataclass(frozen=True)
class Wedge:
  """A pie slice; angles in degrees clockwise from 3 o'clock (PIL's convention)."""
  cx: int
  cy: int
  r: int
  start: float
  end: float
  fill: str

  def ends(self) -> tuple[tuple[int, int], tuple[int, int]]:
    pt = lambda a: (round(self.cx + self.r * math.cos(math.radians(a))),  # noqa: E731
                    round(self.cy + self.r * math.sin(math.radians(a))))
    return pt(self.start), pt(self.end)


@dataclasses.dataclass(frozen=True)
class Text:
  """Text centred on x with its baseline at y."""
  x: int
  y: int
  text: str
  fill: str = "black"
  size: int = FONT_SIZE


Shape = Union[Rect, Circle, Line, Polygon, Polyline, Wedge, Text]


def _pts(points) -> str:
  return " ".join(f"{x},{y}" for x, y in points)


def _svg_element(s: Shape) -> str:
  stroke = lambda c: f' stroke="{c}"' if c else ""  # noqa: E731
  if isinstance(s, Rect):
    return (f'<rect x="{s.x}" y="{s.y}" width="{s.w}" height="{s.h}" fill="{s.fill}"'
            f'{stroke(s.stroke)}/>')
  if isinstance(s, Circle):
    return f'<circle cx="{s.cx}" cy="{s.cy}" r="{s.r}" fill="{s.fill}"{stroke(s.stroke)}/>'
  if isinstance(s, Line):
    width = f' stroke-width="{s.width}"' if s.width != 1 else ""
    return f'<line x1="{s.x1}" y1="{s.y1}" x2="{s.x2}" y2="{s.y2}" stroke="{s.stroke}"{width}/>'
  if isinstance(s, Polygon):
    return f'<polygon points="{_pts(s.points)}" fill="{s.fill}"{stroke(s.stroke)}/>'
  if isinstance(s, Polyline):
    return (f'<polyline points="{_pts(s.points)}" fill="none" stroke="{s.stroke}" '
            f'stroke-width="{s.width}"/>')
  if isinstance(s, Wedge):
    (x1, y1), (x2, y2) = s.ends()
    large = int((s.end - s.start) % 360 > 180)
    return (f'<path d="M{s.cx},{s.cy} L{x1},{y1} A{s.r},{s.r} 0 {large},1 {x2},{y2} Z" '
            f'fill="{s.fill}"/>')
  if isinstance(s, Text):
    attrs = "".join([f' fill="{s.fill}"' if s.fill != "black" else "",
                     f' font-size="{s.size}"' if s.size != FONT_SIZE else ""])
    return f'<text x="{s.x}" y="{s.y}"{attrs}>{escape(s.text)}</text>'
  raise TypeError(f"not a library shape: {type(s).__name__}")


def _plot_statement(s: Shape) -> str:
  outline = lambda c: f", outline={c!r}" if c else ""  # noqa: E731
  fill = lambda c: "" if c == "none" else f", fill={c!r}"  # noqa: E731
  if isinstance(s, Rect):
    return (f"d.rectangle([{s.x}, {s.y}, {s.x + s.w}, {s.y + s.h}]{fill(s.fill)}"
            f"{outline(s.stroke)})")
  if isinstance(s, Circle):
    return (f"d.ellipse([{s.cx - s.r}, {s.cy - s.r}, {s.cx + s.r}, {s.cy + s.r}]"
            f"{fill(s.fill)}{outline(s.stroke)})")
  if isinstance(s, Line):
    return f"d.line([{s.x1}, {s.y1}, {s.x2}, {s.y2}], fill={s.stroke!r}, width={s.width})"
  if isinstance(s, Polygon):
    return f"d.polygon({list(s.points)}{fill(s.fill)}{outline(s.stroke)})"
  if isinstance(s, Polyline):
    return f"d.line({list(s.points)}, fill={s.stroke!r}, width={s.width})"
  if isinstance(s, Wedge):
    return (f"d.pieslice([{s.cx - s.r}, {s.cy - s.r}, {s.cx + s.r}, {s.cy + s.r}], "
            f"{s.start:g}, {s.end:g}, fill={s.fill!r})")
  if isinstance(s, Text):
    return (f"d.text(({s.x}, {s.y}), {s.text!r}, fill={s.fill!r}, "
            f"font=ImageFont.load_default({s.size}), anchor='ms')")
  raise TypeError(f"not a library shape: {type(s).__name__}")


@dataclasses.dataclass(frozen=True)
class Drawing:
  """A picture as a list of shapes on a white canvas of width x height pixels."""
  width: int
  height: int
  shapes: tuple[Shape, ...]

  def svg(self) -> str:
    """Compact SVG: one element per line, text style set once on the root."""
    body = "\n".join(_svg_element(s) for s in self.shapes)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
            f'height="{self.height}" font-size="{FONT_SIZE}" text-anchor="middle">\n'
            f'{body}\n</svg>')

  def plot_program(self) -> str:
    """A PIL program whose `draw()` returns the same picture (PlotJob contract)."""
    body = "\n".join(f"    {_plot_statement(s)}" for s in self.shapes)
    return ("from PIL import Image, ImageDraw, ImageFont\n\n\n"
            "def draw():\n"
            f'    img = Image.new("RGB", ({self.width}, {self.height}), "white")\n'
            "    d = ImageDraw.Draw(img)\n"
            f"{body}\n"
            "    return img\n")


def render_trusted(svg: str, background: str = "white") -> Image.Image:
  """Renders *library* SVG in this process (cairosvg), for Solver warm-start images.

  Only for SVG this module wrote: model-written SVG goes through the sandbox
  (`evejax.sandbox.SvgJob`), which jails the renderer and checks the output.
  """
  import cairosvg  # pylint: disable=g-import-not-at-top
  png = cairosvg.svg2png(bytestring=svg.encode("utf-8"), background_color=background,
                         unsafe=False)
  with Image.open(io.BytesIO(png)) as im:
    return im.convert("RGB")


# ---------------------------------------------------------------------------
# Items.


@dataclasses.dataclass(frozen=True)
class QA:
  """A question, its answer and the short reasoning that leads there."""
  question: str
  answer: str
  reasoning: str


@dataclasses.dataclass(frozen=True)
class LibraryItem:
  """One proposal and its picture.

  Attributes:
    kind: the generator that made it (a key of KINDS).
    topic: a key of `recipes.mmzero_tasks.TOPICS`.
    content_type: one of `rewards.mmzero.CONTENT_TYPES`.
    caption: everything needed to draw the picture, in words.
    easy, hard: the two questions with answers and reasoning.
    drawing: the picture.
    facts: the generated data behind the picture and the answers.
  """
  kind: str
  topic: str
  content_type: str
  caption: str
  easy: QA
  hard: QA
  drawing: Drawing
  facts: dict[str, Any]

  @property
  def easy_question(self) -> str:
    return self.easy.question

  @property
  def easy_answer(self) -> str:
    return self.easy.answer

  @property
  def hard_question(self) -> str:
    return self.hard.question

  @property
  def hard_answer(self) -> str:
    return self.hard.answer

  @property
  def svg(self) -> str:
    return self.drawing.svg()

  @property
  def plot_program(self) -> str:
    return self.drawing.plot_program()

  @property
  def split(self) -> str:
    return split_of(self.caption)


def split_of(caption: str) -> str:
  """'heldout' for one caption hash class in HELDOUT_MODULUS, else 'train'."""
  digest = hashlib.sha256(caption.encode("utf-8")).digest()
  return "heldout" if int.from_bytes(digest[:8], "little") % HELDOUT_MODULUS == 0 else "train"


@dataclasses.dataclass(frozen=True)
class Kind:
  """A generator of items.

  Attributes:
    name: the key in KINDS.
    topic, content_type: what every item of this kind is labelled with.
    n_range: valid values of the size knob n (inclusive).
    n_default: the range n is drawn from when not given (inclusive).
    canvas: the default (width, height) in pixels.
    build: (rng, n, width, height) -> (caption, easy, hard, shapes, facts).
  """
  name: str
  topic: str
  content_type: str
  n_range: tuple[int, int]
  n_default: tuple[int, int]
  canvas: tuple[int, int]
  build: Callable[..., tuple[str, QA, QA, list[Shape], dict]]


def _join(words: Sequence[Any]) -> str:
  words = [str(w) for w in words]
  return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
  return options[int(rng.integers(len(options)))]


def _colors(rng: np.random.Generator, n: int) -> list[str]:
  return [str(c) for c in rng.choice(COLORS, n, replace=False)]


def _plural(n: int, word: str) -> str:
  return f"{n} {word}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------------------
# The kinds. Each returns (caption, easy, hard, shapes, facts).


def _bar_chart(rng, n, w, h):
  labels = list("ABCDEF"[:n])
  values = [int(v) for v in rng.choice(np.arange(1, 10), n, replace=False)]
  colors = _colors(rng, n)
  base, unit = h - 15, (h - 32) / 9
  slot = (w - 10) / n
  bw = max(4, round(slot * 0.6))
  shapes: list[Shape] = [Line(5, base, w - 5, base)]
  for i, (lab, v, c) in enumerate(zip(labels, values, colors)):
    x = round(5 + i * slot + (slot - bw) / 2)
    bh = round(v * unit)
    mid = x + bw // 2
    shapes += [Rect(x, base - bh, bw, bh, c), Text(mid, base - bh - 3, str(v)),
               Text(mid, base + 11, lab)]
  hi, lo = int(np.argmax(values)), int(np.argmin(values))
  listing = ", ".join(f"{lab} {v}" for lab, v in zip(labels, values))
  k = int(rng.integers(n))
  easy = _pick(rng, [
      QA("Which bar is the tallest?", labels[hi],
         f"The bars are {listing}. The tallest is {labels[hi]}."),
      QA(f"What is the value of bar {labels[k]}?", str(values[k]),
         f"Bar {labels[k]} has {values[k]} written above it."),
  ])
  hard = _pick(rng, [
      QA("What is the difference between the tallest and the shortest bar?",
         str(values[hi] - values[lo]),
         f"The bars are {listing}. {values[hi]} - {values[lo]} = {values[hi] - values[lo]}."),
      QA("What is the sum of all the bar values?", str(sum(values)),
         f"The bars are {listing}. {' + '.join(map(str, values))} = {sum(values)}."),
  ])
  caption = (f"A bar chart of {n} vertical bars labelled {_join(labels)} underneath, with "
             f"values {_join(values)}; the bars are {_join(colors)} and each value is "
             "written above its bar.")
  return caption, easy, hard, shapes, {"labels": labels, "values": values, "colors": colors}


def _percentages(rng, n):
  while True:  # distinct multiples of 5, each at least 10, summing to 100
    cuts = np.sort(rng.choice(np.arange(2, 19), n - 1, replace=False)) * 5
    parts = np.diff(np.concatenate([[0], cuts, [100]]))
    if parts.min() >= 10 and len(set(parts.tolist())) == n:
      return [int(p) for p in parts]


def _pie_chart(rng, n, w, h):
  shares = _percentages(rng, n)
  colors = _colors(rng, n)
  cx, cy, r = w // 2, h // 2, min(w, h) // 2 - 6
  shapes: list[Shape] = []
  angle = -90.0
  for p, c in zip(shares, colors):
    end = angle + 3.6 * p
    shapes.append(Wedge(cx, cy, r, angle, end, c))
    mid = math.radians((angle + end) / 2)
    shapes.append(Text(round(cx + 0.62 * r * math.cos(mid)),
                       round(cy + 0.62 * r * math.sin(mid)) + 3, f"{p}%", "white"))
    angle = end
  order = np.argsort(shares)
  big, small2 = int(order[-1]), [int(i) for i in order[:2]]
  listing = ", ".join(f"{c} {p}%" for c, p in zip(colors, shares))
  a, b = sorted((int(i) for i in rng.choice(n, 2, replace=False)),
                key=lambda i: -shares[i])  # a is the larger of the two
  easy = _pick(rng, [
      QA("What colour is the largest slice?", colors[big],
         f"The slices are {listing}. The largest is {colors[big]}."),
      QA(f"What percentage is the {colors[a]} slice?", str(shares[a]),
         f"The {colors[a]} slice is labelled {shares[a]}%."),
  ])
  two = [shares[i] for i in small2]
  hard = _pick(rng, [
      QA("What percentage do the two smallest slices make up together?", str(sum(two)),
         f"The slices are {listing}. The two smallest are {two[0]}% and {two[1]}%; "
         f"{two[0]} + {two[1]} = {sum(two)}."),
      QA(f"How many percentage points larger is the {colors[a]} slice than the "
         f"{colors[b]} slice?", str(shares[a] - shares[b]),
         f"The {colors[a]} slice is {shares[a]}% and the {colors[b]} slice {shares[b]}%; "
         f"{shares[a]} - {shares[b]} = {shares[a] - shares[b]}."),
  ])
  caption = (f"A pie chart of {n} slices starting at the top and going clockwise: "
             f"{listing}; each slice shows its percentage in white.")
  return caption, easy, hard, shapes, {"shares": shares, "colors": colors}


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _line_chart(rng, n, w, h):
  days = list(_DAYS[:n])
  values = [int(v) for v in rng.choice(np.arange(1, 10), n, replace=False)]
  base, unit = h - 15, (h - 32) / 9
  step = (w - 30) / (n - 1)
  pts = tuple((round(15 + i * step), round(base - v * unit)) for i, v in enumerate(values))
  shapes: list[Shape] = [Line(5, base, w - 5, base), Polyline(pts, "blue")]
  for (x, y), v, d in zip(pts, values, days):
    shapes += [Circle(x, y, 2, "blue"), Text(x, y - 4, str(v)),
               Text(x, base + 11, d)]
  hi, lo = int(np.argmax(values)), int(np.argmin(values))
  listing = ", ".join(f"{d} {v}" for d, v in zip(days, values))
  rises = sum(b > a for a, b in zip(values, values[1:]))
  easy = _pick(rng, [
      QA("On which day is the value highest?", days[hi],
         f"The values are {listing}. The highest is on {days[hi]}."),
      QA("On which day is the value lowest?", days[lo],
         f"The values are {listing}. The lowest is on {days[lo]}."),
  ])
  hard = _pick(rng, [
      QA("How many times does the value go up from one day to the next?", str(rises),
         f"The values are {listing}. It goes up {_plural(rises, 'time')}."),
      QA("What is the difference between the highest and the lowest value?",
         str(values[hi] - values[lo]),
         f"The values are {listing}. {values[hi]} - {values[lo]} = {values[hi] - values[lo]}."),
  ])
  caption = (f"A blue line chart over {_join(days)} with values {_join(values)}; each point "
             "is marked with a dot and its value, and the days are written under the axis.")
  return caption, easy, hard, shapes, {"days": days, "values": values}


_ROWS, _COLUMNS = ("P", "Q", "R"), ("X", "Y", "Z")


def _table(rng, n, w, h):
  rows, cols = list(_ROWS[:n]), list(_COLUMNS[:n])
  while True:  # one row with the largest total, so the hard answer is unique
    grid = rng.integers(1, 20, (n, n))
    totals = grid.sum(axis=1)
    if (totals == totals.max()).sum() == 1:
      break
  cell_w, cell_h = (w - 10) // (n + 1), (h - 10) // (n + 1)
  x0, y0 = 5, 5
  shapes: list[Shape] = []
  for i in range(n + 2):
    shapes.append(Line(x0, y0 + i * cell_h, x0 + (n + 1) * cell_w, y0 + i * cell_h))
  for j in range(n + 2):
    shapes.append(Line(x0 + j * cell_w, y0, x0 + j * cell_w, y0 + (n + 1) * cell_h))
  text = lambda j, i, s: Text(x0 + j * cell_w + cell_w // 2,  # noqa: E731
                              y0 + i * cell_h + cell_h // 2 + 4, s)
  shapes += [text(j + 1, 0, c) for j, c in enumerate(cols)]
  shapes += [text(0, i + 1, r) for i, r in enumerate(rows)]
  shapes += [text(j + 1, i + 1, str(int(grid[i, j]))) for i in range(n) for j in range(n)]
  i, j = int(rng.integers(n)), int(rng.integers(n))
  best = int(np.argmax(totals))
  col = int(rng.integers(n))
  row_text = "; ".join(f"row {r}: {', '.join(map(str, grid[k].tolist()))}"
                       for k, r in enumerate(rows))
  easy = QA(f"What is the value in row {rows[i]}, column {cols[j]}?", str(int(grid[i, j])),
            f"Row {rows[i]}, column {cols[j]} holds {int(grid[i, j])}.")
  hard = _pick(rng, [
      QA("Which row has the largest total?", rows[best],
         "The row totals are " + ", ".join(f"{r} {int(t)}" for r, t in zip(rows, totals))
         + f". The largest is {rows[best]}."),
      QA(f"What is the total of column {cols[col]}?", str(int(grid[:, col].sum())),
         f"Column {cols[col]} holds {' + '.join(map(str, grid[:, col].tolist()))} = "
         f"{int(grid[:, col].sum())}."),
  ])
  caption = (f"A table with columns {_join(cols)} and rows {_join(rows)}, drawn with "
             f"black lines; {row_text}.")
  return caption, easy, hard, shapes, {"rows": rows, "columns": cols,
                                       "values": grid.tolist()}


_EVENTS = ("bridge", "school", "park", "tower", "museum", "harbour", "library", "stadium")


def _timeline(rng, n, w, h):
  events = [str(e) for e in rng.choice(_EVENTS, n, replace=False)]
  years = sorted(int(y) for y in rng.choice(np.arange(1900, 2021, 5), n, replace=False))
  y_line = h // 2
  step = (w - 60) / (n - 1)
  shapes: list[Shape] = [Line(10, y_line, w - 10, y_line, "black", 2)]
  for i, (e, yr) in enumerate(zip(events, years)):
    x = round(30 + i * step)
    shapes += [Line(x, y_line - 4, x, y_line + 4), Text(x, y_line - 8, e),
               Text(x, y_line + 16, str(yr))]
  listing = ", ".join(f"{e} {y}" for e, y in zip(events, years))
  k = int(rng.integers(n))
  easy = _pick(rng, [
      QA("Which opened first?", events[0],
         f"In order: {listing}. The first is the {events[0]}."),
      QA(f"In which year did the {events[k]} open?", str(years[k]),
         f"The {events[k]} is marked {years[k]}."),
  ])
  span = years[-1] - years[0]
  m = int(rng.integers(n - 1))
  hard = _pick(rng, [
      QA("How many years passed between the first and the last opening?", str(span),
         f"In order: {listing}. {years[-1]} - {years[0]} = {span}."),
      QA(f"What opened next after the {events[m]}?", events[m + 1],
         f"In order: {listing}. After the {events[m]} comes the {events[m + 1]}."),
  ])
  caption = (f"A timeline of when a town's {_join(events)} opened: a horizontal line with a "
             f"tick for each, the name above and the year below, in order: {listing}.")
  return caption, easy, hard, shapes, {"events": events, "years": years}


_TRIPLES = ((3, 4, 5), (5, 12, 13), (8, 15, 17), (7, 24, 25), (20, 21, 29))


def _right_triangle(rng, n, w, h):
  del n  # always one triangle
  options = [(a * k, b * k, c * k) for a, b, c in _TRIPLES for k in range(1, 7)
             if max(a, b) * k <= 30]
  a, b, c = options[int(rng.integers(len(options)))]
  if rng.random() < 0.5:
    a, b = b, a
  scale = min((w - 40) / a, (h - 30) / b)
  x0, y0 = 25, h - 15
  xa, yb = round(x0 + a * scale), round(y0 - b * scale)
  shapes: list[Shape] = [
      Polygon(((x0, y0), (xa, y0), (x0, yb)), "none", "black"),
      Rect(x0, y0 - 6, 6, 6, "none", "black"),
      Text((x0 + xa) // 2, y0 + 12, str(a)),
      Text(x0 - 10, (y0 + yb) // 2 + 4, str(b)),
  ]
  easy = _pick(rng, [
      QA("What is the length of the horizontal leg?", str(a),
         f"The horizontal leg is labelled {a}."),
      QA("What is the length of the vertical leg?", str(b),
         f"The vertical leg is labelled {b}."),
  ])
  area = a * b / 2
  area_text = str(int(area)) if area == int(area) else str(area)
  hard = _pick(rng, [
      QA("What is the length of the hypotenuse?", str(c),
         f"The legs are {a} and {b}; sqrt({a * a} + {b * b}) = {c}."),
      QA("What is the area of the triangle?", area_text,
         f"The legs are {a} and {b}; {a} x {b} / 2 = {area_text}."),
  ])
  caption = (f"A right triangle with the right angle at the bottom left, marked by a small "
             f"square; the horizontal leg is labelled {a} and the vertical leg {b}; the "
             "hypotenuse is not labelled.")
  return caption, easy, hard, shapes, {"legs": (a, b), "hypotenuse": c}


def _circles(rng, n, w, h):
  radii = [int(r) for r in rng.choice(np.arange(1, 10), n, replace=False)]
  colors = _colors(rng, n)
  slot = w / n
  max_px = min(slot / 2 - 4, (h - 22) / 2)
  cy = round((h - 14) / 2)
  shapes: list[Shape] = []
  for i, (r, c) in enumerate(zip(radii, colors)):
    cx = round(slot * (i + 0.5))
    shapes += [Circle(cx, cy, max(2, round(max_px * r / 9)), c),
               Text(cx, h - 5, f"r={r}")]
  hi, lo = int(np.argmax(radii)), int(np.argmin(radii))
  listing = ", ".join(f"{c} {r}" for c, r in zip(colors, radii))
  k = int(rng.integers(n))
  easy = QA(f"What is the radius of the {colors[k]} circle?", str(radii[k]),
            f"The {colors[k]} circle is labelled r={radii[k]}.")
  hard_options = [QA("What is the diameter of the largest circle?", str(2 * radii[hi]),
                     f"The radii are {listing}. The largest is {radii[hi]}; "
                     f"2 x {radii[hi]} = {2 * radii[hi]}.")]
  if n > 1:
    hard_options.append(QA(
        "How much larger is the radius of the largest circle than that of the smallest?",
        str(radii[hi] - radii[lo]),
        f"The radii are {listing}. {radii[hi]} - {radii[lo]} = {radii[hi] - radii[lo]}."))
  hard = _pick(rng, hard_options)
  caption = (f"{_plural(n, 'circle').capitalize()} in a row, drawn to scale: "
             + ", ".join(f"a {c} one of radius {r}" for c, r in zip(colors, radii))
             + "; each radius is written below its circle as r=value.")
  return caption, easy, hard, shapes, {"radii": radii, "colors": colors}


_WORDS = ("sun", "tree", "boat", "lamp", "frog", "kite", "milk", "rose", "star", "wolf",
          "apple", "piano", "river", "cloud", "horse", "candle", "garden", "rocket")


def _text_cards(rng, n, w, h):
  while True:  # a unique longest word, for the hard question
    words = [str(x) for x in rng.choice(_WORDS, n, replace=False)]
    lengths = [len(x) for x in words]
    if lengths.count(max(lengths)) == 1:
      break
  colors = _colors(rng, n)
  gap = 6
  card_w = (w - gap * (n + 1)) // n
  shapes: list[Shape] = []
  for i, (word, c) in enumerate(zip(words, colors)):
    x = gap + i * (card_w + gap)
    shapes += [Rect(x, 10, card_w, h - 20, c),
               Text(x + card_w // 2, h // 2 + 4, word, "white")]
  k = int(rng.integers(n))
  longest = int(np.argmax(lengths))
  listing = ", ".join(f"{c} '{x}'" for c, x in zip(colors, words))
  easy = QA(f"What word is written on the {colors[k]} card?", words[k],
            f"The {colors[k]} card says '{words[k]}'.")
  hard_options = [QA("How many letters are there on all the cards together?",
                     str(sum(lengths)),
                     f"The cards are {listing}; {' + '.join(map(str, lengths))} = "
                     f"{sum(lengths)} letters.")]
  if n > 1:
    hard_options.append(QA("What colour is the card with the longest word?", colors[longest],
                           f"The cards are {listing}. The longest word is "
                           f"'{words[longest]}', on the {colors[longest]} card."))
  hard = _pick(rng, hard_options)
  caption = (f"{_plural(n, 'coloured card').capitalize()} side by side, each with one word "
             f"in white: {listing}.")
  return caption, easy, hard, shapes, {"words": words, "colors": colors}


_SHAPE_KINDS = ("circle", "square", "triangle")


def _shape(kind, cx, cy, s, color) -> Shape:
  if kind == "circle":
    return Circle(cx, cy, s, color)
  if kind == "square":
    return Rect(cx - s, cy - s, 2 * s, 2 * s, color)
  return Polygon(((cx, cy - s), (cx + s, cy + s), (cx - s, cy + s)), color)


def _shape_count(rng, n, w, h):
  colors = _colors(rng, 3)
  cols = min(n, 3)
  rows = -(-n // cols)
  cw, ch = w / cols, h / rows
  s = round(min(cw, ch) / 2 - 5)
  cells = rng.permutation(rows * cols)[:n]
  items = []
  shapes: list[Shape] = []
  for cell in sorted(int(c) for c in cells):
    kind, color = str(_pick(rng, _SHAPE_KINDS)), str(_pick(rng, colors))
    cx, cy = round((cell % cols + 0.5) * cw), round((cell // cols + 0.5) * ch)
    items.append({"kind": kind, "color": color, "cx": cx, "cy": cy})
    shapes.append(_shape(kind, cx, cy, s, color))
  count = lambda **kw: sum(all(it[k] == v for k, v in kw.items()) for it in items)  # noqa: E731
  kind, color = str(_pick(rng, _SHAPE_KINDS)), str(_pick(rng, colors))
  listing = ", ".join(f"a {it['color']} {it['kind']}" for it in items)
  easy = _pick(rng, [
      QA(f"How many {kind}s are there?", str(count(kind=kind)),
         f"The shapes are {listing}. There {'is' if count(kind=kind) == 1 else 'are'} "
         f"{_plural(count(kind=kind), kind)}."),
      QA("How many shapes are there in total?", str(n),
         f"The shapes are {listing}: {n} in all."),
  ])
  hard = _pick(rng, [
      QA(f"How many {color} {kind}s are there?", str(count(kind=kind, color=color)),
         f"The shapes are {listing}. {_plural(count(kind=kind, color=color), kind)} "
         f"{'is' if count(kind=kind, color=color) == 1 else 'are'} {color}."),
      QA(f"How many shapes are not {color}?", str(n - count(color=color)),
         f"The shapes are {listing}. {count(color=color)} of {n} are {color}, so "
         f"{n - count(color=color)} are not."),
  ])
  caption = (f"{_plural(n, 'shape').capitalize()} spread over a {rows} by {cols} layout, "
             f"reading left to right and top to bottom: {listing}.")
  return caption, easy, hard, shapes, {"shapes": items}


def _dot_sequence(rng, n, w, h):
  first, step = int(rng.integers(1, 4)), int(rng.integers(1, 3))
  color = _colors(rng, 1)[0]
  counts = [first + i * step for i in range(n)]
  gap = 5
  box = min((w - gap * (n + 1)) // n, h - 2 * gap)
  y0 = (h - box) // 2
  per_row = 3
  pitch = box / (per_row + 1)
  shapes: list[Shape] = []
  for i, k in enumerate(counts):
    x0 = gap + i * (box + gap)
    shapes.append(Rect(x0, y0, box, box, "none", "black"))
    for d in range(k):
      shapes.append(Circle(round(x0 + pitch * (d % per_row + 1)),
                           round(y0 + pitch * (d // per_row + 1)), 2, color))
  nxt = first + n * step
  easy = _pick(rng, [
      QA("How many dots are in the first box?", str(counts[0]),
         f"The first box holds {counts[0]} dots." if counts[0] > 1
         else "The first box holds 1 dot."),
      QA("How many boxes are there?", str(n), f"There are {n} boxes in the row."),
  ])
  hard = QA("If the pattern continues, how many dots will the next box hold?", str(nxt),
            f"The boxes hold {_join(counts)} dots, {step} more each time; "
            f"{counts[-1]} + {step} = {nxt}.")
  caption = (f"A row of {n} square boxes outlined in black holding {_join(counts)} {color} "
             f"dots from left to right, {step} more in each box than in the one before.")
  return caption, easy, hard, shapes, {"counts": counts, "step": step, "color": color}


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("bar_chart", "charts", "data_chart", (2, 6), (3, 3), (100, 100), _bar_chart),
    Kind("pie_chart", "charts", "data_chart", (2, 5), (3, 3), (100, 100), _pie_chart),
    Kind("line_chart", "trends", "data_chart", (3, 7), (4, 4), (120, 100), _line_chart),
    Kind("table", "structure", "table", (2, 3), (2, 2), (100, 80), _table),
    Kind("timeline", "structure", "timeline", (2, 4), (3, 3), (180, 60), _timeline),
    Kind("right_triangle", "geometry", "geometry", (1, 1), (1, 1), (100, 100),
         _right_triangle),
    Kind("circles", "quantities", "geometry", (1, 3), (2, 2), (120, 70), _circles),
    Kind("text_cards", "text", "other", (1, 3), (2, 2), (140, 50), _text_cards),
    Kind("shape_count", "shapes", "geometry", (2, 9), (4, 4), (100, 100), _shape_count),
    Kind("dot_sequence", "logic", "other", (3, 4), (3, 3), (150, 60), _dot_sequence),
)}
TINY_KINDS = ("bar_chart", "pie_chart", "timeline", "right_triangle", "circles", "text_cards",
              "shape_count")


def make_item(kind: str, rng: np.random.Generator, *, n: int | None = None,
              canvas: tuple[int, int] | None = None) -> LibraryItem:
  """One item of `kind` drawn from `rng`.

  Args:
    kind: a key of KINDS.
    rng: the numpy Generator every choice is drawn from.
    n: the size knob (bars, slices, rows, ...; see the module docstring); drawn
      from the kind's default range when None.
    canvas: (width, height) in pixels; the kind's default when None.
  """
  if kind not in KINDS:
    raise ValueError(f"Unknown MM-Zero library kind {kind!r}; valid: {sorted(KINDS)}.")
  spec = KINDS[kind]
  if n is None:
    n = int(rng.integers(spec.n_default[0], spec.n_default[1] + 1))
  if not spec.n_range[0] <= n <= spec.n_range[1]:
    raise ValueError(f"n={n} is out of range for the {kind!r} kind; use "
                     f"{spec.n_range[0]}..{spec.n_range[1]}.")
  w, h = canvas or spec.canvas
  caption, easy, hard, shapes, facts = spec.build(rng, n, int(w), int(h))
  return LibraryItem(kind=kind, topic=spec.topic, content_type=spec.content_type,
                     caption=caption, easy=easy, hard=hard,
                     drawing=Drawing(int(w), int(h), tuple(shapes)),
                     facts={"n": n, **facts})


def sample_items(rng: np.random.Generator, count: int, *, split: str = "train",
                 kinds: Sequence[str] = TINY_KINDS, n: int | None = None,
                 max_tries: int = 200) -> list[LibraryItem]:
  """`count` items of `split`, kinds taken in turn, each drawn until its split matches.

  Raises:
    ValueError: an unknown split or kind, or a kind whose items never fall in
      `split` within max_tries draws (its space is too small at this n).
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown library split {split!r}; valid: {list(SPLITS)}.")
  if not kinds:
    raise ValueError("sample_items needs at least one kind; valid: " f"{sorted(KINDS)}.")
  out = []
  for i in range(count):
    kind = kinds[i % len(kinds)]
    for _ in range(max_tries):
      item = make_item(kind, rng, n=n)
      if item.split == split:
        out.append(item)
        break
    else:
      raise ValueError(f"No {split} item of kind {kind!r} in {max_tries} draws; use a "
                       "larger n or another kind.")
  return out
