"""Tests for EVE's code-example queue (evejax.recipes.eve_queue).

Every expected outcome follows the queue paragraph of reference/METHODS.md:
seeds are never evicted; the other entries are the top K by difficulty; a
program enters only if it is valid, its difficulty is strictly above 0.5, its
function (the text above `args_list`) is under 2000 characters with at most 2
comment markers, and its function's sentence-BLEU against every queued
function does not exceed 0.25; each prompt shows 1 or 2 entries, each count
half the time, drawn uniformly. BLEU expectations come from `_bleu` below, a
from-the-formula sentence-BLEU (whitespace tokens, 4-gram uniform weights,
Chen & Cherry method 1 smoothing with epsilon 0.1, brevity penalty), not from
the code under test.
"""
import collections
import json
import math
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import numpy as np

from evejax.data import transforms
from evejax.recipes import eve_queue
from evejax.rewards import eve as eve_rewards

SIZE = (112, 112)
LIB = transforms.library()
# Built-in families whose function texts are lexically far from the seeds and
# from each other (test_novel_families_are_far_apart checks this premise).
NOVEL = ("flip", "zoom", "mirror_half", "mask_cell", "numbered_markers", "draw_arrow",
         "spotlight")
THRESHOLD = 0.25


def _bleu(hypothesis: str, reference: str, epsilon: float = 0.1) -> float:
  """Sentence-BLEU from its definition (see the module docstring)."""
  hyp, ref = hypothesis.split(), reference.split()
  log_p = 0.0
  for n in range(1, 5):
    h = collections.Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
    r = collections.Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
    matches = sum(min(c, r[g]) for g, c in h.items())
    total = max(1, sum(h.values()))
    log_p += math.log((matches or epsilon) / total) / 4
  bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / max(len(hyp), 1))
  return bp * math.exp(log_p)


def args_for(name: str, seed: int) -> list[dict]:
  return LIB[name].sample(np.random.default_rng(seed), *SIZE)


def program(name: str, seed: int = 0) -> str:
  """A full built-in program: imports, edit_image, args_list."""
  return LIB[name].program(args_for(name, seed))


def args_text(prog: str) -> str:
  return prog[prog.index("args_list ="):]


def seeds() -> list[tuple[str, str]]:
  return [(n, program(n, seed=i)) for i, n in enumerate(transforms.SEED_FAMILIES)]


def make_queue(**config) -> eve_queue.ExampleQueue:
  return eve_queue.ExampleQueue(eve_queue.QueueConfig(**config), seeds())


def programs_in(queue: eve_queue.ExampleQueue) -> list[str]:
  return [e.program for e in queue.entries]


def admitted_programs(queue: eve_queue.ExampleQueue) -> set[str]:
  return {e.program for e in queue.entries if not e.seed}


class PremisesTest(absltest.TestCase):
  """The fixtures are what the other tests assume they are."""

  def test_novel_families_are_far_apart(self):
    seed_texts = {n: LIB[n].function_text for n in transforms.SEED_FAMILIES}
    for name in NOVEL:
      text = LIB[name].function_text
      self.assertLess(len(text), 2000, name)
      self.assertEqual(eve_rewards.count_comment_markers(text), 0, name)
      for other, other_text in seed_texts.items():
        self.assertLess(_bleu(text, other_text), 0.2, (name, other))
      for other in NOVEL:
        if other != name:
          self.assertLess(_bleu(text, LIB[other].function_text), 0.2, (name, other))

  def test_bleu_oracle_matches_hand_computed_values(self):
    self.assertAlmostEqual(_bleu("a b c d e", "a b c d e"), 1.0)
    # 4 of 5 unigrams, 3/4 bigrams, 2/3 trigrams, 1/2 4-grams; equal lengths.
    expected = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    self.assertAlmostEqual(_bleu("a b c d x", "a b c d e"), expected)
    # No trigram or 4-gram match: method 1 uses 0.1 / total for those orders.
    expected = (4 / 5 * 2 / 4 * 0.1 / 3 * 0.1 / 2) ** 0.25
    self.assertAlmostEqual(_bleu("a b x c d", "a b c d e"), expected)
    # A shorter hypothesis pays the brevity penalty exp(1 - 5/4).
    expected = math.exp(1 - 5 / 4) * (4 / 4 * 3 / 3 * 2 / 2 * 1 / 1) ** 0.25
    self.assertAlmostEqual(_bleu("a b c d", "a b c d e"), expected)


class SeedsAndCapacityTest(absltest.TestCase):

  def test_queue_starts_with_the_seeds(self):
    q = make_queue()
    self.assertEqual(programs_in(q), [p for _, p in seeds()])
    self.assertTrue(all(e.seed for e in q.entries))
    self.assertEqual(q.num_admitted, 0)

  def test_seeds_are_never_evicted_when_only_seeds_fit(self):
    q = make_queue(capacity=len(transforms.SEED_FAMILIES))
    for name in NOVEL:
      self.assertNotEqual(q.offer(program(name), 1.0, True), "admitted")
    self.assertEqual(programs_in(q), [p for _, p in seeds()])

  def test_seeds_are_never_evicted_by_harder_programs(self):
    q = make_queue(capacity=len(transforms.SEED_FAMILIES) + 1)
    for i, name in enumerate(NOVEL):
      q.offer(program(name), 0.6 + 0.05 * i, True)
      self.assertEqual([e.program for e in q.entries if e.seed], [p for _, p in seeds()])
      # The one free slot holds the hardest program offered so far.
      self.assertEqual(admitted_programs(q), {program(name)})

  def test_seed_protection_does_not_rest_on_its_recorded_difficulty(self):
    # Seeds are kept because they are seeds, even if a state records them as
    # easier than every candidate.
    q = make_queue(capacity=len(transforms.SEED_FAMILIES))
    state = [dict(e, difficulty=0.0) for e in q.state()]
    q.restore(json.loads(json.dumps(state)))
    for name in NOVEL[:3]:
      self.assertNotEqual(q.offer(program(name), 0.99, True), "admitted")
    self.assertEqual(programs_in(q), [p for _, p in seeds()])

  def test_weakest_is_replaced_only_by_a_harder_program(self):
    q = make_queue(capacity=len(transforms.SEED_FAMILIES) + 2)
    a, b, c, d, e, f = (program(n) for n in NOVEL[:6])
    self.assertEqual(q.offer(a, 0.6, True), "admitted")
    self.assertEqual(q.offer(b, 0.9, True), "admitted")
    self.assertLen(q, 6)
    # Full: c (0.7) is harder than the weakest non-seed entry a (0.6).
    self.assertEqual(q.offer(c, 0.7, True), "admitted")
    self.assertEqual(admitted_programs(q), {b, c})
    self.assertLen(q, 6)
    # d (0.65) is easier than the weakest (c, 0.7): nothing changes.
    self.assertNotEqual(q.offer(d, 0.65, True), "admitted")
    # e ties the weakest: not harder, so it does not replace it.
    self.assertNotEqual(q.offer(e, 0.7, True), "admitted")
    self.assertEqual(admitted_programs(q), {b, c})
    # f (0.95) replaces the weakest, c, not b.
    self.assertEqual(q.offer(f, 0.95, True), "admitted")
    self.assertEqual(admitted_programs(q), {b, f})
    self.assertEqual(programs_in(q)[:4], [p for _, p in seeds()])

  def test_keeps_the_top_k_whatever_the_offer_order(self):
    k = 3
    difficulty = dict(zip(NOVEL, (0.55, 0.93, 0.61, 0.88, 0.72, 0.99, 0.66)))
    top = sorted(NOVEL, key=difficulty.get, reverse=True)[:k]
    for order_seed in range(4):
      order = [str(n) for n in np.random.default_rng(order_seed).permutation(NOVEL)]
      q = make_queue(capacity=len(transforms.SEED_FAMILIES) + k)
      for name in order:
        q.offer(program(name), difficulty[name], True)
      self.assertEqual(admitted_programs(q), {program(n) for n in top})
      self.assertLen(q, len(transforms.SEED_FAMILIES) + k)


class AdmissionTest(absltest.TestCase):
  """Each admission rule on its own: a candidate that passes every other rule."""

  def setUp(self):
    super().setUp()
    self.base = program("flip")

  def assertAdmitted(self, prog, difficulty=0.8, valid=True, **config):
    q = make_queue(**config)
    self.assertEqual(q.offer(prog, difficulty, valid), "admitted")
    self.assertIn(prog, admitted_programs(q))

  def assertRejected(self, prog, difficulty=0.8, valid=True, **config):
    q = make_queue(**config)
    before = programs_in(q)
    self.assertNotEqual(q.offer(prog, difficulty, valid), "admitted")
    self.assertEqual(programs_in(q), before)
    return q

  def test_base_candidate_is_admitted(self):
    self.assertAdmitted(self.base)

  def test_invalid_program_is_rejected(self):
    self.assertRejected(self.base, valid=False)

  def test_difficulty_must_be_strictly_above_half(self):
    for d in (0.0, 0.25, 0.5):
      self.assertRejected(self.base, difficulty=d)
    for d in (float(np.nextafter(0.5, 1.0)), 0.51, 1.0):
      self.assertAdmitted(self.base, difficulty=d)

  def _padded(self, function_chars: int, args: str | None = None) -> str:
    """The base program with its function text padded to exactly `function_chars`."""
    func = LIB["flip"].function_text
    pad = function_chars - len(func) - len('_PAD = ""\n')
    self.assertGreaterEqual(pad, 0)
    func = f'_PAD = "{"p" * pad}"\n{func}'
    prog = f"{func}\n\n\n{args or args_text(self.base)}"
    self.assertEqual(len(eve_rewards.split_program(prog)[0]), function_chars)
    return prog

  def test_function_must_be_under_2000_characters(self):
    self.assertAdmitted(self._padded(1999))
    self.assertRejected(self._padded(2000))
    self.assertRejected(self._padded(2600))

  def test_args_list_does_not_count_towards_the_length(self):
    long_args = transforms.format_args_list(
        [dict(a, note="n" * 700) for a in args_for("flip", 0)])
    prog = self._padded(1999, args=long_args)
    self.assertGreater(len(prog), 4000)
    self.assertAdmitted(prog)

  def _with_markers(self, header: str, args: str | None = None) -> str:
    func = f"{header}{LIB['flip'].function_text}"
    return f"{func}\n\n\n{args or args_text(self.base)}"

  def test_at_most_two_comment_markers(self):
    cases = [  # (text put above the imports, comment markers it holds)
        ("", 0),
        ("# one\n", 1),
        ("# one\n# two\n", 2),
        ('"""A docstring."""\n', 2),
        ("'''A docstring.'''\n", 2),
        ("# one\n# two\n# three\n", 3),
        ('"""A docstring."""\n# and a comment\n', 3),
        ("'''A docstring.'''\n'''Another.'''\n", 4),
        # As in the reference, a '#' inside a string literal counts too.
        ("# one\n# two\nRED = '#ff0000'\n", 3),
    ]
    for header, markers in cases:
      with self.subTest(header=header):
        prog = self._with_markers(header)
        self.assertEqual(
            eve_rewards.count_comment_markers(eve_rewards.split_program(prog)[0]), markers)
        if markers <= 2:
          self.assertAdmitted(prog)
        else:
          self.assertRejected(prog)

  def test_markers_in_args_list_do_not_count(self):
    args = transforms.format_args_list(
        [dict(a, color=c) for a, c in zip(args_for("flip", 0),
                                          ("#ff0000", "#00ff00", "#0000ff", "#ffffff"))])
    self.assertAdmitted(self._with_markers("# one\n# two\n", args=args))

  def test_same_function_with_other_args_is_a_duplicate(self):
    for name in transforms.SEED_FAMILIES:
      other = program(name, seed=100)
      self.assertNotEqual(other, dict(seeds())[name])
      self.assertRejected(other)
    # Also against admitted (non-seed) entries.
    q = make_queue()
    self.assertEqual(q.offer(program("flip", 0), 0.8, True), "admitted")
    self.assertNotEqual(q.offer(program("flip", 1), 0.9, True), "admitted")
    self.assertEqual(admitted_programs(q), {program("flip", 0)})

  def test_lexically_close_function_from_another_family_is_a_duplicate(self):
    # invert_region shares most of its text with the highlight_box seed.
    cand = LIB["invert_region"].function_text
    scores = {n: _bleu(cand, LIB[n].function_text) for n in transforms.SEED_FAMILIES}
    score = scores["highlight_box"]
    self.assertEqual(max(scores, key=scores.get), "highlight_box")
    self.assertGreater(score, THRESHOLD + 0.05)
    self.assertRejected(program("invert_region"))
    # The threshold is the config's: just below this BLEU rejects, just above admits.
    self.assertRejected(program("invert_region"), bleu_threshold=score - 0.02)
    self.assertAdmitted(program("invert_region"), bleu_threshold=score + 0.02)

  def test_small_edit_of_a_queued_function_is_a_duplicate(self):
    seed_func = LIB["rotate"].function_text
    func = seed_func.replace("img", "im") + "\n    # rotated"
    edited = func + "\n\n\n" + args_text(program("rotate"))
    self.assertNotEqual(eve_rewards.split_program(edited)[0], seed_func)
    self.assertGreater(_bleu(eve_rewards.split_program(edited)[0], seed_func), THRESHOLD)
    self.assertRejected(edited)

  def test_bleu_is_on_the_function_text_not_the_args(self):
    # flip's function with highlight_box's args: the whole programs are close,
    # the functions are not, so it is a new program.
    seed_prog = dict(seeds())["highlight_box"]
    cand = LIB["flip"].function_text + "\n\n\n" + args_text(seed_prog)
    self.assertGreater(_bleu(cand, seed_prog), THRESHOLD)
    self.assertLess(_bleu(LIB["flip"].function_text, LIB["highlight_box"].function_text),
                    THRESHOLD)
    self.assertAdmitted(cand)


class SampleExamplesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.queue = make_queue()
    for name in NOVEL[:2]:
      self.assertEqual(self.queue.offer(program(name), 0.8, True), "admitted")
    self.assertLen(self.queue, 6)

  def draws(self, queue, seed, n):
    rng = np.random.default_rng(seed)
    return [[e.program for e in queue.sample_examples(rng)] for _ in range(n)]

  def test_one_or_two_distinct_entries_each_half_the_time(self):
    n = 4000
    draws = self.draws(self.queue, 0, n)
    sizes = collections.Counter(len(d) for d in draws)
    self.assertEqual(set(sizes), {1, 2})
    # Binomial(4000, 0.5): sd ~ 32 draws, so +-200 is > 6 sd.
    self.assertBetween(sizes[1], n // 2 - 200, n // 2 + 200)
    for d in draws:
      self.assertLen(set(d), len(d))  # without replacement
    counts = collections.Counter(p for d in draws for p in d)
    self.assertEqual(set(counts), set(programs_in(self.queue)))
    mean = sum(counts.values()) / len(counts)   # ~1000 per entry
    for prog, c in counts.items():
      self.assertBetween(c, 0.85 * mean, 1.15 * mean)

  def test_deterministic_per_seed(self):
    self.assertEqual(self.draws(self.queue, 7, 200), self.draws(self.queue, 7, 200))
    self.assertNotEqual(self.draws(self.queue, 7, 200), self.draws(self.queue, 8, 200))

  def test_a_single_entry_queue_shows_that_entry(self):
    q = eve_queue.ExampleQueue(eve_queue.QueueConfig(), seeds()[:1])
    for d in self.draws(q, 0, 50):
      self.assertEqual(d, [seeds()[0][1]])


class StateTest(absltest.TestCase):

  def test_json_round_trip_behaves_identically(self):
    config = eve_queue.QueueConfig(capacity=len(transforms.SEED_FAMILIES) + 2)
    q = eve_queue.ExampleQueue(config, seeds())
    q.offer(program("flip"), 0.6, True, step=3)
    q.offer(program("zoom"), 0.9, True, step=4)
    restored = eve_queue.ExampleQueue(config)
    restored.restore(json.loads(json.dumps(q.state())))
    self.assertEqual(restored.state(), q.state())
    self.assertEqual(restored.stats(), q.stats())

    # The same offers give the same outcomes (seeds still never evicted,
    # the weakest still known, duplicates still seen).
    offers = [(program("mirror_half"), 0.7), (program("mask_cell"), 0.65),
              (program("flip", 5), 0.99), (program("spotlight"), 1.0),
              (program("rotate", 9), 1.0)]
    for i, (prog, d) in enumerate(offers):
      self.assertEqual(restored.offer(prog, d, True, step=10 + i),
                       q.offer(prog, d, True, step=10 + i))
    self.assertEqual(restored.state(), q.state())
    self.assertEqual([e.program for e in restored.entries if e.seed], [p for _, p in seeds()])

    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(50):
      self.assertEqual([e.program for e in q.sample_examples(rng_a)],
                       [e.program for e in restored.sample_examples(rng_b)])


if __name__ == "__main__":
  absltest.main()
