"""Tests for EVE question construction and warm-start text (evejax.recipes.eve_tasks)."""
import ast
import collections
import os
import re
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import numpy as np
from PIL import Image

from evejax.data import sources
from evejax.data import transforms
from evejax.recipes import eve
from evejax.recipes import eve_tasks
from evejax.recipes import runner
from evejax.rewards import eve as eve_rewards
from evejax.recipes.eve_tasks import LETTERS

LIMITS = {"max_function_chars": 2000, "max_comments": 2}


def load_program(program: str):
  """Trusted harness: returns (edit_image, args_list) of a built-in program."""
  namespace = {}
  exec(compile(program, "<program>", "exec"), namespace)
  return namespace["edit_image"], namespace["args_list"]


def apply(edit_image, image, args):
  return np.asarray(edit_image(image.copy(), **args))


def same(a, b) -> bool:
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and bool((a == b).all())


class QuestionsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.image = sources.render_scene(np.random.default_rng(11), (112, 112))
    self.family = transforms.library()["jigsaw_2x2"]
    self.args_list = self.family.sample(np.random.default_rng(4), 112, 112)
    self.edit, _ = load_program(self.family.program(self.args_list))
    self.outputs = [self.edit(self.image.copy(), **a) for a in self.args_list]
    self.source = self.family.function_text

  def build(self, **kw):
    kw.setdefault("types", (0, 1, 2))
    return eve_tasks.build_questions(self.image, self.source, self.args_list, self.outputs,
                                     **kw)

  def test_type0_answer_is_the_image_the_args_produce(self):
    for seed in range(5):
      for q in self.build(types=(0,), ks=range(4), seed=seed):
        k = q.meta["k"]
        self.assertLen(q.images, 5)
        self.assertIs(q.images[0], self.image)
        self.assertIn(repr(self.args_list[k]), q.text)
        expected = apply(self.edit, self.image, self.args_list[k])
        picked = q.images[1 + LETTERS.index(q.answer)]
        self.assertTrue(same(picked, expected))
        # And no other option shows that image: the answer is unique.
        others = [im for i, im in enumerate(q.images[1:]) if LETTERS[i] != q.answer]
        self.assertFalse(any(same(im, expected) for im in others))
        self.assertEqual(q.options, ["image_1", "image_2", "image_3", "image_4"])

  def test_type1_answer_is_the_args_that_produce_the_image(self):
    for seed in range(5):
      for q in self.build(types=(1,), ks=range(4), seed=seed):
        self.assertLen(q.images, 2)
        chosen = ast.literal_eval(q.options[LETTERS.index(q.answer)])
        self.assertTrue(same(apply(self.edit, self.image, chosen), q.images[1]))
        for letter, option in zip(LETTERS, q.options):
          self.assertIn(f"{letter}. {option}", q.text)
          if letter != q.answer:
            other = ast.literal_eval(option)
            self.assertFalse(same(apply(self.edit, self.image, other), q.images[1]))

  def test_type2_answer_maps_every_image_to_its_args(self):
    for seed in range(5):
      (q,) = self.build(types=(2,), seed=seed)
      self.assertLen(q.answer, 4)
      self.assertCountEqual(q.answer, LETTERS)
      for j, letter in enumerate(q.answer):
        args = ast.literal_eval(q.options[LETTERS.index(letter)])
        self.assertTrue(same(apply(self.edit, self.image, args), q.images[1 + j]))
      self.assertEqual(eve_rewards.solver_accuracy(f"\\boxed{{{q.answer}}}", q.answer,
                                                   kind="letter_sequence"), 1.0)

  def test_every_question_shows_the_code_size_and_boxed(self):
    for q in self.build():
      self.assertIn(self.source, q.text)
      self.assertIn("112x112", q.text)
      self.assertIn("\\boxed{}", q.text)
    self.assertEqual([q.qtype for q in self.build(types=(1, 0))], [1, 0])
    self.assertEqual([q.qtype for q in self.build(types=(0, 1))], [0, 1])

  def test_shuffles_are_deterministic_and_vary_with_seed_and_program(self):
    first = [(q.text, q.answer, q.meta) for q in self.build(seed=3)]
    again = [(q.text, q.answer, q.meta) for q in self.build(seed=3)]
    self.assertEqual(first, again)
    orders, answers = set(), collections.Counter()
    for seed in range(24):
      for q in self.build(seed=seed):
        orders.add((q.qtype, tuple(q.meta["order"])))
        answers[(q.qtype, q.answer)] += 1
    for qtype in (0, 1, 2):
      self.assertGreater(len([o for o in orders if o[0] == qtype]), 5)
    for qtype in (0, 1):
      self.assertEqual({a for t, a in answers if t == qtype}, set(LETTERS))
    # A different program text reshuffles even with the same seed.
    base = self.build(types=(1,), ks=[0], seed=3)
    changed = []
    for n in range(1, 9):
      source = self.source.replace("tile", f"tile{n}")
      changed.append(eve_tasks.build_questions(self.image, source, self.args_list, self.outputs,
                                               types=(1,), ks=[0], seed=3)[0].meta)
    self.assertTrue(any(m["order"] != base[0].meta["order"] for m in changed))

  def test_sorted_options_follow_the_arguments_text(self):
    by_text = sorted(range(4), key=lambda i: repr(self.args_list[i]))
    for seed in range(3):
      type0, type1 = self.build(types=(0, 1), ks=[2], seed=seed, option_order="sorted")
      self.assertEqual(type1.options, [repr(self.args_list[i]) for i in by_text])
      self.assertEqual(type1.answer, LETTERS[by_text.index(2)])
      # Type 0 shows the results in the same order, so the letters agree.
      self.assertEqual(type0.answer, type1.answer)
      self.assertTrue(same(type0.images[1 + by_text.index(0)], self.outputs[0]))

  def test_seed_is_stable(self):
    # sha256-based: the same value in every process (unlike hash() of a str).
    self.assertEqual(runner.stable_seed("a", 1), runner.stable_seed("a", 1))
    self.assertNotEqual(runner.stable_seed("a", 1), runner.stable_seed("a", 2))
    import hashlib
    want = int.from_bytes(hashlib.sha256(b'["a", 1]').digest()[:4], "little") & 0x7FFFFFFF
    self.assertEqual(runner.stable_seed("a", 1), want)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "4 args dicts and 4 outputs"):
      eve_tasks.build_questions(self.image, self.source, self.args_list[:3], self.outputs)
    with self.assertRaisesRegex(ValueError, r"types \[3\]"):
      self.build(types=(0, 3))
    with self.assertRaisesRegex(ValueError, "k=4"):
      self.build(types=(0,), ks=[4])
    with self.assertRaisesRegex(ValueError, "option order 'random'.*'sorted'"):
      self.build(option_order="random")


class GradingTest(absltest.TestCase):
  """The one grader of a Solver reply (reward, pass rates, evaluation)."""

  def test_the_three_uses_agree_on_ambiguous_replies(self):
    # Each reply once read differently by the reward and by the pass rates.
    for reply, gold, kind, want in ((r"\boxed{Answer C}", "C", "letter", 1.0),
                                    (r"\fbox{B}", "B", "letter", 1.0),
                                    (r"\boxed{AAAA}", "BDAC", "letter_sequence", 0.0)):
      with self.subTest(reply):
        acc = eve_rewards.solver_accuracy(reply, gold, kind=kind)
        self.assertEqual(acc, want)
        self.assertEqual(eve_rewards.solver_reward(reply, gold, kind=kind).parts["accuracy"], acc)
    self.assertEqual(eve_rewards.solver_accuracy(r"\boxed{BDCA}", "BDAC", kind="letter_sequence",
                                                 partial_credit=False), 0.0)

  def test_type2_partial_credit_by_hand(self):
    gold = "BDAC"
    cases = {
        "BDAC": 1.0,
        "B, D, A, C": 1.0,
        "BDCA": 0.5,   # image_3 and image_4 swapped
        "DBAC": 0.5,
        "BACD": 0.25,  # only image_1 right
        "ABCD": 0.0,
        "BDA": 0.0,    # too short
        "BDACA": 0.0,  # too long
        "": 0.0,
        "bdac": 0.0,   # letters must be capitals, as asked
        "AAAA": 0.0,   # one letter for every image is no matching
    }
    for pred, want in cases.items():
      with self.subTest(pred):
        self.assertEqual(eve_rewards.solver_accuracy(f"\\boxed{{{pred}}}", gold,
                                                     kind="letter_sequence"), want)

  def test_choice_and_boxed(self):
    for reply, want in ((r"\boxed{C}", 1.0), (r"so \boxed{C. image_3}", 1.0),
                        (r"\boxed{B}", 0.0), (r"\boxed{none}", 0.0), ("C", 0.0),
                        (r"\boxed{B} then \boxed{C}", 1.0), (r"\boxed{C} then \boxed{B", 1.0)):
      with self.subTest(reply):
        self.assertEqual(eve_rewards.solver_accuracy(reply, "C"), want)


class WarmStartTest(absltest.TestCase):

  def test_challenger_target_is_think_then_a_runnable_program(self):
    family = transforms.library()["rotate"]
    args_list = family.sample(np.random.default_rng(0), 112, 112)
    target = eve_tasks.challenger_sft_target(family, args_list, "Rotate by a few angles.")
    self.assertEqual(target.count("<think>"), 1)
    self.assertEqual(target.count("</think>"), 1)
    self.assertLess(target.index("</think>"), target.index("```python"))
    blocks = re.findall(r"```python\n(.*?)```", target, re.S)
    self.assertLen(blocks, 1)
    self.assertEqual(blocks[0].strip(), family.program(args_list).strip())
    edit, parsed = load_program(blocks[0])
    self.assertEqual(parsed, args_list)
    self.assertIsInstance(edit(Image.new("RGB", (112, 112), "red"), **parsed[0]), Image.Image)

  def test_challenger_instructions_show_examples_and_size(self):
    lib = transforms.library()
    rng = np.random.default_rng(0)
    examples = [lib[n].program(lib[n].sample(rng, 140, 112)) for n in ("crop_box", "flip")]
    one = eve_tasks.challenger_instructions(examples[:1], (140, 112), **LIMITS)
    two = eve_tasks.challenger_instructions(examples, (140, 112), **LIMITS)
    self.assertIn(examples[0].strip(), one)
    self.assertNotIn(examples[1].strip(), one)
    self.assertIn(examples[1].strip(), two)
    for text in (one, two):
      self.assertIn("140x112", text)
      self.assertIn("args_list", text)
      self.assertIn("<think>", text)
    self.assertIn("## Example 2", two)
    self.assertNotIn("## Example 2", one)
    self.assertIn("under 2000 characters with at most 2 comments", one)

  def test_qwen3_vl_conventions(self):
    # Relative coordinates: no pixel size to keep boxes in; the <thinking> tag.
    text = eve_tasks.challenger_instructions(["x"], (140, 112), **LIMITS,
                                             coordinates="relative", think_tag="thinking")
    self.assertNotIn("140x112", text)
    self.assertIn("0 to 1000", text)
    self.assertIn("<thinking>...</thinking>", text)
    self.assertNotIn("<think>", text)
    family = transforms.library("relative")["crop_box_relative"]
    _, target = eve_tasks.challenger_sft_pair(
        family, np.random.default_rng(1), (112, 112), [], style="compact",
        limits={**LIMITS, "coordinates": "relative", "think_tag": "thinking"})
    self.assertEqual(eve_rewards.format_score(target, think_tag="thinking"), (1.0, "ok"))

  def test_sft_pairs(self):
    family = transforms.library()["flip"]
    prompt, target = eve_tasks.challenger_sft_pair(
        family, np.random.default_rng(1), (112, 112), ["example program"], limits=LIMITS)
    self.assertIn("example program", prompt)
    self.assertIn(family.description, target)
    image = sources.render_scene(np.random.default_rng(2), (112, 112))
    args_list = family.sample(np.random.default_rng(2), 112, 112)
    edit, _ = load_program(family.program(args_list))
    outputs = [edit(image.copy(), **a) for a in args_list]
    for q in eve_tasks.build_questions(image, family.function_text, args_list, outputs,
                                       types=(0, 1, 2), seed=5):
      prompt, target = eve_tasks.solver_sft_pair(q)
      self.assertEqual(prompt, q.text)
      self.assertTrue(target.endswith(f"\\boxed{{{q.answer}}}"))
      self.assertFalse(target.startswith("\\boxed"))  # reasoning first (full format credit)
      kind = "letter_sequence" if q.qtype == 2 else "letter"
      self.assertEqual(eve_rewards.solver_accuracy(target, q.answer, kind=kind), 1.0)

  def test_named_option_reads_the_rationale(self):
    family = transforms.library()["flip"]
    image = sources.render_scene(np.random.default_rng(3), (112, 112))
    args_list = family.sample(np.random.default_rng(3), 112, 112)
    edit, _ = load_program(family.program(args_list))
    outputs = [edit(image.copy(), **a) for a in args_list]
    type0, type1 = eve_tasks.build_questions(image, family.function_text, args_list, outputs,
                                             types=(0, 1), seed=2)
    gold = LETTERS.index(type1.answer)
    _, target = eve_tasks.solver_sft_pair(type1, reasoning="rationale")   # the config's value
    self.assertEqual(target, f"{eve_tasks.solver_reasoning(type1)}\n\n\\boxed{{{type1.answer}}}")
    self.assertEqual(eve_tasks.named_option(type1, target), gold)
    # The rationale of another option, answered with the gold letter: what it named counts.
    other = (gold + 1) % 4
    wrong = eve_tasks.solver_sft_pair(type1, reasoning=f"It is {type1.options[other]}.")[1]
    self.assertEqual(eve_tasks.named_option(type1, wrong), other)
    # Options inside the box do not count; two named, none named, or type 0: None.
    self.assertIsNone(eve_tasks.named_option(type1, f"\\boxed{{{type1.options[gold]}}}"))
    self.assertIsNone(eve_tasks.named_option(
        type1, f"{type1.options[0]} or {type1.options[1]} \\boxed{{A}}"))
    self.assertIsNone(eve_tasks.named_option(type1, "The answer is\n\n\\boxed{A}"))
    self.assertIsNone(eve_tasks.named_option(type0, target))

    # The evaluation's two rates, over type-1 replies: named the answer's arguments;
    # of those that named any, boxed the letter of what they named.
    replies = [target, wrong, "The answer is\n\n\\boxed{A}", target]
    questions = [type1, type1, type1, type0]
    samples = types.SimpleNamespace(texts=replies, prompt_of=lambda r: r)
    stub = types.SimpleNamespace(run=types.SimpleNamespace(mean=lambda v: float(np.mean(v))))
    rates = eve.Eve._rationale_agreement(stub, questions, samples, "heldout")
    self.assertEqual(rates, {"heldout_names_answer_type1": 1 / 3,
                             "heldout_letter_of_named_type1": 0.5})


class SandboxQuestionsTest(absltest.TestCase):

  def test_questions_from_sandbox_results_are_correct(self):
    try:
      from evejax import sandbox
      pool = sandbox.SandboxPool(sandbox.SandboxConfig(workers=1))
    except (ImportError, AttributeError, RuntimeError, OSError):
      self.skipTest("evejax.sandbox pool unavailable")
    image = sources.render_scene(np.random.default_rng(5), (112, 112))
    lib = transforms.library()
    programs = [lib[n].program(lib[n].sample(np.random.default_rng(5), 112, 112))
                for n in ("crop_box", "swap_regions")]
    with pool:
      results = pool.map([sandbox.EveJob(p, image) for p in programs])
    for program, result in zip(programs, results):
      self.assertTrue(result.ok, (result.reason, result.detail))
      outputs = [Image.fromarray(a) for a in result.images]
      edit, args_list = load_program(program)
      for q in eve_tasks.build_questions(image, result.function_source, result.args,
                                         outputs, types=(0, 1, 2), ks=range(4), seed=1):
        if q.qtype == 0:
          want = apply(edit, image, args_list[q.meta["k"]])
          self.assertTrue(same(q.images[1 + LETTERS.index(q.answer)], want))
        elif q.qtype == 1:
          chosen = ast.literal_eval(q.options[LETTERS.index(q.answer)])
          self.assertTrue(same(apply(edit, image, chosen), q.images[1]))
        else:
          for j, letter in enumerate(q.answer):
            chosen = ast.literal_eval(q.options[LETTERS.index(letter)])
            self.assertTrue(same(apply(edit, image, chosen), q.images[1 + j]))


if __name__ == "__main__":
  absltest.main()
