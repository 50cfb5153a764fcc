"""The MM-Zero warm-start library: renders in the sandbox, answers correct by construction.

Answers are recomputed here from each item's facts by an oracle written
independently of the generators (one rule per question wording), and the facts
are checked against the rendered pixels: bar heights, slice areas, circle
sizes, shape kinds and colours, dots per box, triangle proportions.
"""
import collections
import math
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import numpy as np
from scipy import ndimage

from evejax.data import mmzero_library as lib
from evejax.rewards import mmzero as mmzero_rewards
from evejax.sandbox import PlotJob, SandboxConfig, SandboxPool, SvgJob

SEEDS = range(3)  # rendered per kind and backend
ORACLE_SEEDS = range(40)  # answers recomputed per kind


def _argmax_unique(values):
  best = max(values)
  assert list(values).count(best) == 1, values
  return list(values).index(best)


def _argmin_unique(values):
  return _argmax_unique([-v for v in values])


def _answer(kind, f, q):  # pylint: disable=too-many-return-statements,too-many-branches
  """The answer to question `q` about facts `f`, or KeyError for an unknown wording."""
  m = lambda pattern: re.fullmatch(pattern, q)  # noqa: E731
  if kind == "bar_chart":
    v, lab = f["values"], f["labels"]
    if m(r"Which bar is the tallest\?"):
      return lab[_argmax_unique(v)]
    if g := m(r"What is the value of bar (\w)\?"):
      return str(v[lab.index(g[1])])
    if m(r"What is the difference between the tallest and the shortest bar\?"):
      return str(max(v) - min(v))
    if m(r"What is the sum of all the bar values\?"):
      return str(sum(v))
  if kind == "pie_chart":
    s, c = f["shares"], f["colors"]
    if m(r"What colour is the largest slice\?"):
      return c[_argmax_unique(s)]
    if g := m(r"What percentage is the (\w+) slice\?"):
      return str(s[c.index(g[1])])
    if m(r"What percentage do the two smallest slices make up together\?"):
      return str(sum(sorted(s)[:2]))
    if g := m(r"How many percentage points larger is the (\w+) slice than the (\w+) slice\?"):
      diff = s[c.index(g[1])] - s[c.index(g[2])]
      assert diff > 0, (q, f)
      return str(diff)
  if kind == "line_chart":
    v, d = f["values"], f["days"]
    if m(r"On which day is the value highest\?"):
      return d[_argmax_unique(v)]
    if m(r"On which day is the value lowest\?"):
      return d[_argmin_unique(v)]
    if m(r"How many times does the value go up from one day to the next\?"):
      return str(sum(1 for k in range(1, len(v)) if v[k] > v[k - 1]))
    if m(r"What is the difference between the highest and the lowest value\?"):
      return str(max(v) - min(v))
  if kind == "table":
    grid, rows, cols = np.array(f["values"]), f["rows"], f["columns"]
    if g := m(r"What is the value in row (\w), column (\w)\?"):
      return str(grid[rows.index(g[1]), cols.index(g[2])])
    if m(r"Which row has the largest total\?"):
      return rows[_argmax_unique(grid.sum(axis=1).tolist())]
    if g := m(r"What is the total of column (\w)\?"):
      return str(grid[:, cols.index(g[1])].sum())
  if kind == "timeline":
    e, y = f["events"], f["years"]
    if m(r"Which opened first\?"):
      return e[_argmin_unique(y)]
    if g := m(r"In which year did the (\w+) open\?"):
      return str(y[e.index(g[1])])
    if m(r"How many years passed between the first and the last opening\?"):
      return str(max(y) - min(y))
    if g := m(r"What opened next after the (\w+)\?"):
      later = [(yr, ev) for yr, ev in zip(y, e) if yr > y[e.index(g[1])]]
      return min(later)[1]
  if kind == "right_triangle":
    a, b = f["legs"]
    if m(r"What is the length of the horizontal leg\?"):
      return str(a)
    if m(r"What is the length of the vertical leg\?"):
      return str(b)
    if m(r"What is the length of the hypotenuse\?"):
      c = math.hypot(a, b)
      assert c == int(c)
      return str(int(c))
    if m(r"What is the area of the triangle\?"):
      return f"{a * b / 2:g}"
  if kind == "circles":
    r, c = f["radii"], f["colors"]
    if g := m(r"What is the radius of the (\w+) circle\?"):
      return str(r[c.index(g[1])])
    if m(r"What is the diameter of the largest circle\?"):
      return str(2 * max(r))
    if m(r"How much larger is the radius of the largest circle than that of the smallest\?"):
      return str(max(r) - min(r))
  if kind == "text_cards":
    w, c = f["words"], f["colors"]
    if g := m(r"What word is written on the (\w+) card\?"):
      return w[c.index(g[1])]
    if m(r"How many letters are there on all the cards together\?"):
      return str(sum(len(x) for x in w))
    if m(r"What colour is the card with the longest word\?"):
      return c[_argmax_unique([len(x) for x in w])]
  if kind == "shape_count":
    shapes = f["shapes"]
    if g := m(r"How many (circle|square|triangle)s are there\?"):
      return str(sum(s["kind"] == g[1] for s in shapes))
    if m(r"How many shapes are there in total\?"):
      return str(len(shapes))
    if g := m(r"How many (\w+) (circle|square|triangle)s are there\?"):
      return str(sum(s["color"] == g[1] and s["kind"] == g[2] for s in shapes))
    if g := m(r"How many shapes are not (\w+)\?"):
      return str(sum(s["color"] != g[1] for s in shapes))
  if kind == "dot_sequence":
    counts = f["counts"]
    if m(r"How many dots are in the first box\?"):
      return str(counts[0])
    if m(r"How many boxes are there\?"):
      return str(len(counts))
    if m(r"If the pattern continues, how many dots will the next box hold\?"):
      steps = {b - a for a, b in zip(counts, counts[1:])}
      assert len(steps) == 1
      return str(counts[-1] + steps.pop())
  raise KeyError(f"{kind}: no oracle for {q!r}")


def _near(img, rgb, tol=60):
  return np.abs(img.astype(int) - np.array(rgb)).sum(-1) < tol


def _dark_gray(img):
  """Black and the gray of antialiased one-pixel black lines, not the palette colours."""
  img = img.astype(int)
  return (img.max(-1) - img.min(-1) < 40) & (img.sum(-1) < 500)


def _bbox(mask):
  ys, xs = np.nonzero(mask)
  return xs.min(), xs.max(), ys.min(), ys.max()


def _components(mask, min_pixels=3):
  labels, k = ndimage.label(mask)
  out = []
  for i in range(1, k + 1):
    comp = labels == i
    if comp.sum() >= min_pixels:
      out.append(comp)
  return out


def _shape_kind(comp):
  x0, x1, y0, y1 = _bbox(comp)
  fill = comp.sum() / ((x1 - x0 + 1) * (y1 - y0 + 1))
  return "square" if fill > 0.9 else ("circle" if fill > 0.62 else "triangle")


class LibraryRendersTest(absltest.TestCase):
  """Every kind, several seeds, both backends, through the real sandbox."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.items = [lib.make_item(k, np.random.default_rng(s)) for k in lib.KINDS for s in SEEDS]
    with SandboxPool(SandboxConfig(workers=2)) as pool:
      cls.svg = pool.map([SvgJob(it.svg) for it in cls.items])
      cls.plot = pool.map([PlotJob(it.plot_program) for it in cls.items])

  def test_every_item_renders_with_both_backends(self):
    for it, svg, plot in zip(self.items, self.svg, self.plot):
      for res in (svg, plot):
        self.assertTrue(res.ok, f"{it.kind}: {res.reason} {res.detail}")
        self.assertEqual(res.images[0].shape, (it.drawing.height, it.drawing.width, 3))

  def test_backends_draw_the_same_colours_in_the_same_places(self):
    for it, svg, plot in zip(self.items, self.svg, self.plot):
      a, b = svg.images[0], plot.images[0]
      for name, rgb in lib.PALETTE.items():
        ma, mb = _near(a, rgb), _near(b, rgb)
        self.assertEqual(ma.sum() > 8, mb.sum() > 8, f"{it.kind} {name}")
        if ma.sum() > 8:
          np.testing.assert_allclose(_bbox(ma), _bbox(mb), atol=3,
                                     err_msg=f"{it.kind} {name}")

  def images(self, kind):
    return [(it, res.images[0]) for it, res in zip(self.items, self.svg) if it.kind == kind]

  def test_bar_heights_follow_the_values(self):
    for it, img in self.images("bar_chart"):
      f = it.facts
      heights = [_near(img, lib.PALETTE[c], 30).any(axis=1).sum() for c in f["colors"]]
      self.assertEqual(np.argsort(heights).tolist(), np.argsort(f["values"]).tolist())
      per_unit = np.array(heights) / np.array(f["values"])
      self.assertLess(per_unit.max() - per_unit.min(), 1.0)  # heights ∝ values

  def test_slice_areas_follow_the_percentages(self):
    for it, img in self.images("pie_chart"):
      f = it.facts
      areas = np.array([_near(img, lib.PALETTE[c], 100).sum() for c in f["colors"]], float)
      np.testing.assert_allclose(areas / areas.sum(), np.array(f["shares"]) / 100, atol=0.03)

  def test_circle_sizes_follow_the_radii(self):
    for it, img in self.images("circles"):
      f = it.facts
      radii = [math.sqrt(_near(img, lib.PALETTE[c]).sum() / math.pi) for c in f["colors"]]
      self.assertEqual(np.argsort(radii).tolist(), np.argsort(f["radii"]).tolist())

  def test_shapes_on_the_pixels_are_the_facts(self):
    for it, img in self.images("shape_count"):
      want = collections.Counter((s["color"], s["kind"]) for s in it.facts["shapes"])
      got = collections.Counter()
      for name, rgb in lib.PALETTE.items():
        for comp in _components(_near(img, rgb), min_pixels=20):
          got[(name, _shape_kind(comp))] += 1
      self.assertEqual(got, want)

  def test_dots_per_box(self):
    for it, img in self.images("dot_sequence"):
      f = it.facts
      boxes = sorted((_bbox(c) for c in _components(_dark_gray(img), 50)),
                     key=lambda b: b[0])
      dot_mask = _near(img, lib.PALETTE[f["color"]], 100)
      dots = [ndimage.center_of_mass(c) for c in _components(dot_mask, 1)]
      per_box = [sum(x0 < x < x1 and y0 < y < y1 for y, x in dots)
                 for x0, x1, y0, y1 in boxes]
      self.assertEqual(per_box, f["counts"])

  def test_triangle_proportions_follow_the_legs(self):
    for it, img in self.images("right_triangle"):
      a, b = it.facts["legs"]
      outline = max(_components(_dark_gray(img), 10), key=lambda c: c.sum())
      x0, x1, y0, y1 = _bbox(outline)
      self.assertAlmostEqual((x1 - x0) / (y1 - y0), a / b, delta=0.08 * a / b + 0.05)


class LibraryFactsTest(absltest.TestCase):

  def test_answers_are_correct_by_construction(self):
    for kind in lib.KINDS:
      for seed in ORACLE_SEEDS:
        it = lib.make_item(kind, np.random.default_rng(seed))
        for qa in (it.easy, it.hard):
          self.assertEqual(qa.answer, _answer(kind, it.facts, qa.question),
                           f"{kind} seed {seed}: {qa.question}")
          self.assertIn(qa.answer, qa.reasoning)  # the reasoning ends at the answer

  def test_captions_state_the_data(self):
    for kind in lib.KINDS:
      it = lib.make_item(kind, np.random.default_rng(7))
      scalars = []
      for value in it.facts.values():
        if isinstance(value, (list, tuple)):
          for v in np.ravel(np.array(value, dtype=object)):
            scalars += list(v.values())[:2] if isinstance(v, dict) else [v]
      for v in scalars:
        self.assertIn(str(v), it.caption, kind)

  def test_labels(self):
    from evejax.recipes import mmzero_tasks  # the topic keys live with the prompts
    for kind, spec in lib.KINDS.items():
      self.assertIn(spec.topic, mmzero_tasks.TOPICS, kind)
      self.assertIn(spec.content_type, mmzero_rewards.CONTENT_TYPES, kind)
      it = lib.make_item(kind, np.random.default_rng(0))
      for answer in (it.easy_answer, it.hard_answer):
        self.assertTrue(mmzero_tasks.is_short_answer(answer, max_words=1), answer)

  def test_size_knob(self):
    for kind, spec in lib.KINDS.items():
      for n in range(spec.n_range[0], spec.n_range[1] + 1):
        it = lib.make_item(kind, np.random.default_rng(n), n=n)
        self.assertEqual(it.facts["n"], n)
      with self.assertRaisesRegex(ValueError, f"n=99 is out of range for the '{kind}'"):
        lib.make_item(kind, np.random.default_rng(0), n=99)
    lengths = {n: len(lib.make_item("bar_chart", np.random.default_rng(0), n=n).facts["values"])
               for n in (2, 6)}
    self.assertEqual(lengths, {2: 2, 6: 6})
    with self.assertRaisesRegex(ValueError, "Unknown MM-Zero library kind 'map'"):
      lib.make_item("map", np.random.default_rng(0))

  def test_tiny_kinds_are_short(self):
    for kind in lib.TINY_KINDS:
      lengths = [len(lib.make_item(kind, np.random.default_rng(s)).svg) for s in range(20)]
      self.assertLess(max(lengths), 600, kind)

  def test_canvas(self):
    it = lib.make_item("bar_chart", np.random.default_rng(0), canvas=(160, 120))
    self.assertIn('width="160" height="120"', it.svg)
    self.assertEqual(lib.render_trusted(it.svg).size, (160, 120))


class SplitTest(absltest.TestCase):

  def test_splits_are_disjoint_deterministic_and_about_a_fifth(self):
    kinds = tuple(lib.KINDS)
    train = lib.sample_items(np.random.default_rng(0), 60, split="train", kinds=kinds)
    held = lib.sample_items(np.random.default_rng(0), 30, split="heldout", kinds=kinds)
    self.assertTrue(all(it.split == "train" for it in train))
    self.assertTrue(all(it.split == "heldout" for it in held))
    self.assertEmpty({it.caption for it in train} & {it.caption for it in held})
    self.assertEqual([it.kind for it in held[:len(kinds)]], list(kinds))
    again = lib.sample_items(np.random.default_rng(0), 30, split="heldout", kinds=kinds)
    self.assertEqual([it.caption for it in held], [it.caption for it in again])
    drawn = [lib.make_item(k, np.random.default_rng(s)).split for k in kinds
             for s in range(60)]
    self.assertAlmostEqual(drawn.count("heldout") / len(drawn), 0.2, delta=0.05)

  def test_errors_name_the_fix(self):
    with self.assertRaisesRegex(ValueError, "Unknown library split 'test'"):
      lib.sample_items(np.random.default_rng(0), 1, split="test")
    seed = next(s for s in range(100)  # whose first draw is a train item
                if lib.make_item("right_triangle", np.random.default_rng(s)).split == "train")
    with self.assertRaisesRegex(ValueError, "No heldout item of kind 'right_triangle'"):
      lib.sample_items(np.random.default_rng(seed), 1, split="heldout",
                       kinds=("right_triangle",), max_tries=1)


if __name__ == "__main__":
  absltest.main()
