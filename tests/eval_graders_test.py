"""The evaluator's rule graders against cases worked by hand from reference/EVALUATION.md."""
from absl.testing import absltest

from evejax.eval import benchmarks
from evejax.eval import graders
from evejax.eval import templates
from evejax.eval.records import Item

COLOURS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}   # 17 characters in all


class CanInferTest(absltest.TestCase):
  """VLMEvalKit's matcher: letter tokens first, option texts second."""

  def test_a_lone_letter_among_the_last_four_tokens(self):
    self.assertEqual(graders.can_infer("The answer is B", COLOURS), "B")
    self.assertEqual(graders.can_infer("(C)", COLOURS), "C")
    self.assertEqual(graders.can_infer("Answer: **D**.", COLOURS), "D")

  def test_a_letter_early_in_a_long_reply_is_not_an_answer(self):
    reply = "B is what many would pick at first, but looking again I am not sure"
    self.assertIsNone(graders.can_infer(reply, COLOURS))

  def test_two_letters_are_ambiguous(self):
    self.assertIsNone(graders.can_infer("A or C", COLOURS))

  def test_only_the_items_options_count_as_letters(self):
    two = {"A": "left", "B": "right"}
    self.assertIsNone(graders.can_infer("C", two))
    self.assertEqual(graders.can_infer("C or B", two), "B")

  def test_refusals_and_a_lone_z(self):
    self.assertEqual(graders.can_infer(
        "I'm sorry, but without the image provided I cannot say.", COLOURS), "Z")
    self.assertEqual(graders.can_infer("Z", COLOURS), "Z")

  def test_option_text_in_a_short_reply(self):
    self.assertEqual(graders.can_infer("It is Blue.", COLOURS), "B")
    # Two option texts: undecided.
    self.assertIsNone(graders.can_infer("red and blue", COLOURS))
    # Over twice the options' total length (34 characters): no text match.
    self.assertIsNone(graders.can_infer("the colour I see here is clearly blue", COLOURS))

  def test_grade_mcq_marks_undecided(self):
    g = graders.grade_mcq("no idea", COLOURS, "B")
    self.assertEqual((g.score, g.decided), (0.0, False))
    g = graders.grade_mcq("B", COLOURS, "B")
    self.assertEqual((g.extracted, g.score, g.decided), ("B", 1.0, True))


class YesNoTest(absltest.TestCase):

  def test_words(self):
    self.assertEqual(graders.yes_no("Yes, it is."), "Yes")
    self.assertEqual(graders.yes_no("NO!"), "No")
    self.assertEqual(graders.yes_no("yes and no"), "Unknown")
    self.assertEqual(graders.yes_no("Not sure"), "Unknown")   # "not" is not "no"
    self.assertEqual(graders.yes_no("The answer: yes."), "Yes")

  def test_grade(self):
    self.assertEqual(graders.grade_yes_no("yes", "Yes").score, 1.0)
    g = graders.grade_yes_no("maybe", "No")
    self.assertEqual((g.score, g.decided), (0.0, False))


class RelaxedAccuracyTest(absltest.TestCase):

  def test_five_percent_at_and_around(self):
    for pred, ok in (("10.5", True), ("9.5", True), ("10.51", False), ("9.49", False),
                     ("10", True), (" 10.2 ", True)):
      self.assertEqual(graders.relaxed_match(pred, "10"), ok, pred)

  def test_percent_and_zero_and_text(self):
    self.assertTrue(graders.relaxed_match("0.5", "50%"))     # 50% reads as 0.5
    self.assertTrue(graders.relaxed_match("51%", "50%"))
    self.assertTrue(graders.relaxed_match("0", "0"))         # zero gold: string equality
    self.assertFalse(graders.relaxed_match("0.0", "0"))
    self.assertTrue(graders.relaxed_match("Blue", "blue"))
    self.assertFalse(graders.relaxed_match("10 units", "10"))  # the whole reply must be the number

  def test_several_golds_take_the_max(self):
    self.assertEqual(graders.grade_relaxed("7", ["3", "7"]).score, 1.0)
    self.assertEqual(graders.grade_relaxed("5", ["3", "7"]).score, 0.0)


class Ai2dTest(absltest.TestCase):

  def test_leading_letter_else_the_reply(self):
    self.assertEqual(graders.leading_letter("B. because it eats plants"), "B")
    self.assertEqual(graders.grade_leading_letter("b", "B").score, 1.0)
    self.assertEqual(graders.grade_leading_letter("(B)", "B").score, 1.0)
    self.assertEqual(graders.grade_leading_letter("The answer is B", "B").score, 0.0)


class MmmuTest(absltest.TestCase):
  ANIMALS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}

  def test_bracket_then_space_then_dot(self):
    self.assertEqual(graders.mmmu_choice("(B)", self.ANIMALS), ("B", True))
    self.assertEqual(graders.mmmu_choice("The answer is C", self.ANIMALS), ("C", True))
    self.assertEqual(graders.mmmu_choice("B.dog", self.ANIMALS), ("B", True))

  def test_several_candidates_take_the_last(self):
    self.assertEqual(graders.mmmu_choice("(A) or maybe (D)", self.ANIMALS), ("D", True))
    self.assertEqual(graders.mmmu_choice("A B", self.ANIMALS), ("B", True))

  def test_option_text_in_a_long_reply(self):
    reply = "i think it is a dog because it barks"
    self.assertEqual(graders.mmmu_choice(reply, self.ANIMALS), ("B", True))
    # Five words or fewer: no content match, the random fallback.
    letter, found = graders.mmmu_choice("a dog", self.ANIMALS, "item-7")
    self.assertFalse(found)
    self.assertIn(letter, self.ANIMALS)
    self.assertEqual(graders.mmmu_choice("a dog", self.ANIMALS, "item-7")[0], letter)

  def test_random_fallback_depends_on_the_item_only(self):
    picks = {graders.mmmu_choice("?", self.ANIMALS, f"id{k}")[0] for k in range(40)}
    self.assertGreater(len(picks), 1)

  def test_open_answers(self):
    self.assertTrue(graders.mmmu_open_correct(graders.mmmu_open_predictions(
        "The answer is 42."), ["42"]))
    self.assertTrue(graders.mmmu_open_correct(graders.mmmu_open_predictions(
        "So the total is 1,000"), ["1000"]))
    self.assertTrue(graders.mmmu_open_correct(graders.mmmu_open_predictions("It is blue"),
                                              ["Blue"]))
    self.assertFalse(graders.mmmu_open_correct(graders.mmmu_open_predictions("maybe 8"), ["7"]))
    self.assertEqual(graders.grade_mmmu("x = 3.14159", {}, "3.14", "q").score, 1.0)


class MathVistaTest(absltest.TestCase):

  def test_types(self):
    self.assertEqual(graders.mathvista_rule("3.0", {}, "3", "int").score, 1.0)
    self.assertFalse(graders.mathvista_rule("three", {}, "3", "int").decided)
    self.assertEqual(graders.mathvista_rule("2.54", {}, "2.5", "float", 1).score, 1.0)
    self.assertEqual(graders.mathvista_rule("2.56", {}, "2.5", "float", 1).score, 0.0)
    # No precision: the gold's decimals (2).
    self.assertEqual(graders.mathvista_rule("1.234", {}, "1.23", "float").score, 1.0)
    self.assertEqual(graders.mathvista_rule("[1, 2]", {}, "[1,2]", "list").score, 1.0)
    self.assertEqual(graders.mathvista_rule("green", COLOURS, "C", "text").score, 1.0)


class HallusionTest(absltest.TestCase):

  def test_three_accuracies_on_a_constructed_set(self):
    rec = graders.HallusionRecord
    records = [rec("VD", "0", "0", "0", True), rec("VD", "0", "0", "1", True),
               rec("VD", "0", "1", "0", False), rec("VD", "0", "1", "1", True),
               rec("VD", "1", "0", "0", True)]
    m = graders.hallusion_accuracies(records)
    # aAcc 4/5; figures (0,0) all right, (0,1) not, (1,0) right: 2/3;
    # questions (0,q0) [right, wrong] not, (0,q1) right, (1,q0) right: 2/3.
    self.assertAlmostEqual(m["aAcc"], 80.0)
    self.assertAlmostEqual(m["fAcc"], 200 / 3)
    self.assertAlmostEqual(m["qAcc"], 200 / 3)
    self.assertAlmostEqual(m["mean"], (80 + 400 / 3) / 3)

  def test_ids_from_the_index(self):
    self.assertEqual(graders.hallusion_ids("VS_chart_x_3_1_2", {}), ("3", "1", "2"))
    self.assertIsNone(graders.hallusion_ids("17", {}))
    self.assertEqual(graders.hallusion_ids("17", {"set_id": 1, "figure_id": 0,
                                                  "question_id": 2}), ("1", "0", "2"))

  def test_summary_counts_failures_as_wrong_and_excludes_no_image(self):
    rows = [
        {"id": "VD_a_b_0_0_0", "score": 1.0, "reason": "", "subcategory": "VD",
         "group": ["0", "0", "0"], "category": "c"},
        {"id": "VD_a_b_0_0_1", "score": 0.0, "reason": "prompt_too_long", "subcategory": "VD",
         "group": ["0", "0", "1"], "category": "c"},
        {"id": "x", "score": 0.0, "reason": "no_image"},
    ]
    s = benchmarks.summarise(benchmarks.get_benchmark("hallusion"), rows)
    self.assertEqual((s["num_rows"], s["num_counted"]), (3, 2))
    self.assertEqual(s["failures"], {"no_image": 1, "prompt_too_long": 1})
    self.assertAlmostEqual(s["aAcc"], 50.0)
    self.assertAlmostEqual(s["fAcc"], 0.0)     # the figure group has a wrong question
    self.assertAlmostEqual(s["qAcc"], 50.0)
    self.assertAlmostEqual(s["score"], (50.0 + 0.0 + 50.0) / 3)


class ExtractionAndPromptTest(absltest.TestCase):

  def test_boxed_rules_of_each_profile(self):
    reply = r"first \boxed{A} then \boxed{\text{B}}"
    self.assertEqual(graders.last_boxed(reply), "B")
    self.assertEqual(graders.first_answer_tag_or_boxed(reply), "A")
    self.assertEqual(graders.first_answer_tag_or_boxed(r"<answer>C</answer> \boxed{D}"), "C")
    self.assertEqual(graders.last_boxed(r"\boxed{\frac{1}{2}}"), r"\frac{1}{2}")
    self.assertEqual(graders.last_flat_boxed(r"\boxed{7} and \boxed{x}"), "x")
    self.assertIsNone(graders.last_boxed("no box"))

  def test_vlmevalkit_mcq_prompt_with_the_eve_suffix(self):
    item = Item("1", "What colour?", "B", options={"A": "red", "B": "blue"}, hint="Look.")
    text = templates.eve_post_processing(templates.vlmevalkit(item, "mcq"))
    self.assertEqual(text, "Hint: Look.\nQuestion: What colour?\nOptions:\nA. red\nB. blue\n"
                           "Please select the correct answer from the options above."
                           "\nPlease put your final answer within \\boxed{}.")

  def test_lmms_eval_prompts(self):
    item = Item("1", "What colour?", "B", options={"A": "red", "B": "blue"})
    self.assertEqual(templates.lmms_eval(item, "mcq"), "What colour?\nA. red\nB. blue\n"
                     "Answer with the option's letter from the given choices directly.")
    self.assertEqual(templates.lmms_eval(item, "mmmu"), "What colour?\nA. red\nB. blue\n\n"
                     "Answer with the option's letter from the given choices directly.")
    floaty = Item("2", "How long?", "1.5", answer_type="float", precision=1, unit="cm",
                  extra={"query": "full query"})
    self.assertEqual(templates.lmms_eval(floaty, "mathvista"),
                     "How long? (Unit: cm)\nAnswer the question using a single "
                     "floating-point number with one decimal place.")


if __name__ == "__main__":
  absltest.main()
