"""Procedural scenes and their ground-truth questions (evejax.data.scene_questions).

The shapes are found again on the rendered pixels (connected components of
each palette colour; circle, square or triangle from how much of its box a
component fills), and every question is answered from those pixels by an
oracle written here, independently of the templates.
"""
import collections
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import numpy as np
from scipy import ndimage

from evejax.data import scene_questions as sq


def shapes_on_pixels(image):
  """[(colour, kind, centre x, centre y, area)] found on the image."""
  img = np.asarray(image).astype(int)
  found = []
  for name, rgb in sq.COLORS.items():
    labels, k = ndimage.label((img == rgb).all(-1))
    for i in range(1, k + 1):
      ys, xs = np.nonzero(labels == i)
      box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
      fill = len(xs) / box
      kind = "square" if fill > 0.92 else ("circle" if fill > 0.65 else "triangle")
      found.append((name, kind, (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2,
                    len(xs)))
  return found


def _one(found, i, value):
  hits = [f for f in found if f[i] == value]
  assert len(hits) == 1, (value, found)
  return hits[0]


def _named(found, color, kind):
  hits = [f for f in found if f[0] == color and f[1] == kind]
  assert len(hits) == 1, (color, kind, found)
  return hits[0]


def answer_from_pixels(found, question):  # pylint: disable=too-many-return-statements
  m = lambda pattern: re.fullmatch(pattern, question)  # noqa: E731
  if m(r"How many shapes are there\?"):
    return str(len(found))
  if g := m(r"How many (\w+) shapes are there\?"):
    return str(sum(f[0] == g[1] for f in found))
  if g := m(r"How many (\w+)s are there\?"):
    return str(sum(f[1] == g[1] for f in found))
  if g := m(r"What colour is the (\w+)\?"):
    return _one(found, 1, g[1])[0]
  if g := m(r"What shape is the (\w+) one\?"):
    return _one(found, 0, g[1])[1]
  if g := m(r"Is the (\w+) (\w+) to the left of the (\w+) (\w+)\?"):
    a, b = _named(found, g[1], g[2]), _named(found, g[3], g[4])
    return "yes" if a[2] < b[2] else "no"
  if g := m(r"Is the (\w+) (\w+) above the (\w+) (\w+)\?"):
    a, b = _named(found, g[1], g[2]), _named(found, g[3], g[4])
    return "yes" if a[3] < b[3] else "no"
  if m(r"What colour is the largest shape\?"):
    first, second = sorted(found, key=lambda f: -f[4])[:2]
    assert first[4] > 1.3 * second[4], found  # clearly largest on the pixels too
    return first[0]
  if m(r"What shape is furthest to the left\?"):
    return min(found, key=lambda f: f[2])[1]
  raise KeyError(f"no oracle for {question!r}")


class SceneTest(absltest.TestCase):

  def test_pixels_hold_exactly_the_scene(self):
    for q in sq.sample_questions(0, 40):
      found = shapes_on_pixels(q.image())
      want = collections.Counter((s.color, s.kind) for s in q.scene.shapes)
      self.assertEqual(collections.Counter(f[:2] for f in found), want, q.key)
      for s in q.scene.shapes:
        hits = [f for f in found if f[:2] == (s.color, s.kind)
                and abs(f[2] - s.cx) < 2 and abs(f[3] - s.cy) < 2]
        self.assertLen(hits, 1, f"{q.key}: {s}")

  def test_answers_are_correct_on_the_pixels(self):
    seen = set()
    for split in sq.SPLITS:
      for q in sq.sample_questions(1, 150, split=split):
        found = shapes_on_pixels(q.image())
        self.assertEqual(q.answer, answer_from_pixels(found, q.question),
                         f"{q.key} {q.template}: {q.question}")
        seen.add(q.template)
    self.assertEqual(seen, set(sq.TEMPLATES))

  def test_answers_are_one_short_word(self):
    vocabulary = set(sq.COLORS) | set(sq.KINDS) | {"yes", "no"} | {str(i) for i in range(10)}
    for q in sq.sample_questions(2, 200):
      self.assertIn(q.answer, vocabulary, q.question)
      self.assertNotIn(q.answer, q.rationale.lower().split())

  def test_deterministic_and_split(self):
    a = sq.sample_questions(3, 12)
    b = sq.sample_questions(3, 12)
    self.assertEqual(a, b)
    np.testing.assert_array_equal(np.asarray(a[4].image()), np.asarray(b[4].image()))
    self.assertEqual(sq.sample_questions(3, 6, start=6), a[6:])
    held = sq.sample_questions(3, 12, split="heldout")
    self.assertEmpty({q.scene for q in a} & {q.scene for q in held})
    self.assertNotEqual([q.scene for q in sq.sample_questions(4, 12)], [q.scene for q in a])
    self.assertTrue(all(q.key.startswith("heldout-") for q in held))

  def test_templates_and_sizes(self):
    qs = sq.sample_questions(5, 30, templates=("left_of", "above"), num_shapes=4,
                             size=(96, 80))
    self.assertEqual({q.template for q in qs}, {"left_of", "above"})
    self.assertTrue(all(len(q.scene.shapes) == 4 for q in qs))
    self.assertEqual(qs[0].image().size, (96, 80))
    with self.assertRaisesRegex(ValueError, "Unknown scene question templates.*'count_all'"):
      sq.sample_questions(0, 1, templates=("count_everything",))
    with self.assertRaisesRegex(ValueError, "Unknown scene split 'dev'"):
      sq.sample_questions(0, 1, split="dev")
    with self.assertRaisesRegex(ValueError, "num_shapes=10"):
      sq.sample_questions(0, 1, num_shapes=10)
    with self.assertRaisesRegex(ValueError, "fits the templates"):
      sq.sample_questions(0, 1, templates=("left_of",), num_shapes=1, max_tries=3)

  def test_a_coarser_grid_draws_fewer_larger_shapes_with_correct_answers(self):
    coarse = sq.sample_questions(7, 120, grid=2)
    for q in coarse:
      self.assertEqual(q.answer, answer_from_pixels(shapes_on_pixels(q.image()), q.question),
                       f"{q.key} {q.template}: {q.question}")
    self.assertEqual({len(q.scene.shapes) for q in coarse}, {2, 3, 4})
    fine = sq.sample_questions(7, 120)
    mean_size = lambda qs: np.mean([s.size for q in qs for s in q.scene.shapes])  # noqa: E731
    self.assertGreater(mean_size(coarse), 1.4 * mean_size(fine))   # cells 3/2 as wide
    self.assertEqual(fine, sq.sample_questions(7, 120, grid=sq.GRID))
    self.assertTrue(all(len(q.scene.shapes) == 1 for q in sq.sample_questions(7, 5, grid=1)))
    with self.assertRaisesRegex(ValueError, "num_shapes=5: a 2 x 2 scene holds 1..4"):
      sq.sample_questions(0, 1, num_shapes=5, grid=2)
    with self.assertRaisesRegex(ValueError, "grid=0"):
      sq.sample_questions(0, 1, grid=0)
    source = sq.SceneSource(3, seed=7, shuffle=False, grid=2)
    for q, (_, image) in zip(coarse, source.take(3)):
      np.testing.assert_array_equal(np.asarray(image), np.asarray(q.image()))

  def test_scene_source_yields_the_question_scenes(self):
    source = sq.SceneSource(8, split="heldout", seed=6, shuffle=False)
    qs = sq.sample_questions(6, 8, split="heldout")
    for q, (key, image) in zip(qs, source.take(8)):
      self.assertEqual(key, q.key)
      np.testing.assert_array_equal(np.asarray(image), np.asarray(q.image()))
    one = sq.SceneSource(4, seed=6, shuffle=False, num_shapes=1)
    for q, (_, image) in zip(sq.sample_questions(6, 4, num_shapes=1), one.take(4)):
      self.assertLen(q.scene.shapes, 1)
      np.testing.assert_array_equal(np.asarray(image), np.asarray(q.image()))
    state = source.state()
    nxt = source.take(2)
    source.restore(state)
    self.assertEqual([k for k, _ in source.take(2)], [k for k, _ in nxt])


if __name__ == "__main__":
  absltest.main()
