"""The evaluator's scorers, summaries and prompts against cases worked by hand."""
import pathlib

from absl.testing import absltest

from evejax.eval import benchmarks
from evejax.eval import graders
from evejax.eval import mmzero_rules
from evejax.eval import profiles
from evejax.eval import scoring
from evejax.eval import templates
from evejax.eval.records import Item

ROOT = pathlib.Path(__file__).resolve().parents[1]

COLOURS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}   # 17 characters in all


def rule(benchmark, harness, answer, item):
  native = benchmarks.get_benchmark(benchmark).harness
  return scoring.scorer_for(benchmark, harness, native).rule(answer, item)


class ScorerTest(absltest.TestCase):
  """Hand-worked cases of each harness's rules (tests/eval_corpus_test.py has the many)."""

  def test_vlmevalkit_mcq_letters_then_texts(self):
    item = Item("1", "Q", "B", options=COLOURS)
    self.assertEqual(rule("mmstar", "vlmevalkit", "The answer is B", item),
                     graders.Grade("B", 1.0, True))
    # An early letter is an article; 2x the options' total length caps text matching.
    g = rule("mmstar", "vlmevalkit", "B is what many would pick at first, but I am unsure", item)
    self.assertEqual((g.score, g.decided), (0.0, False))
    self.assertEqual(rule("mmstar", "vlmevalkit", "It is Blue.", item).extracted, "B")

  def test_vlmevalkit_yes_no_keeps_stars_colons_and_quotes(self):
    item = Item("1", "Q", "Yes")
    self.assertFalse(rule("hallusion", "vlmevalkit", "**Yes**", item).decided)
    self.assertFalse(rule("hallusion", "vlmevalkit", "Answer:Yes", item).decided)
    self.assertEqual(rule("hallusion", "vlmevalkit", "Yes and no: maybe", item).extracted, "Yes")

  def test_vlmevalkit_mathvista_prefetch(self):
    item = Item("1", "Q", "3", answer_type="int")
    self.assertEqual(rule("mathvista", "vlmevalkit", "3", item).score, 1.0)
    for undecided in ("3.7", "3.0", "5", "three"):   # int() refuses, or a wrong number
      self.assertFalse(rule("mathvista", "vlmevalkit", undecided, item).decided, undecided)

  def test_lmms_eval_ai2d_capital_letter_only(self):
    item = Item("1", "Q", "B", options=COLOURS)
    self.assertEqual(rule("ai2d", "lmms_eval", "B. blue", item).score, 1.0)
    self.assertEqual(rule("ai2d", "lmms_eval", "b. blue", item).score, 0.0)
    self.assertEqual(rule("ai2d", "lmms_eval", "B .", item).score, 0.0)   # no strip after punct

  def test_lmms_eval_mmmu_numbers_on_word_boundaries(self):
    item = Item("1", "Q", "12")
    self.assertEqual(rule("mmmu", "lmms_eval", "The answer is 12", item).score, 1.0)
    self.assertEqual(rule("mmmu", "lmms_eval", "12cm", item).score, 0.0)
    self.assertEqual(rule("mmmu", "lmms_eval", "So \nblue", Item("2", "Q", "blue")).score, 1.0)

  def test_mmmu_random_fallback_depends_on_the_item_only(self):
    animals = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    picks = {rule("mmmu", "lmms_eval", "?", Item(f"id{k}", "Q", "A", options=animals)).extracted
             for k in range(40)}
    self.assertGreater(len(picks), 1)
    again = rule("mmmu", "lmms_eval", "?", Item("id3", "Q", "A", options=animals))
    self.assertEqual(again, rule("mmmu", "lmms_eval", "?", Item("id3", "Q", "A", options=animals)))
    self.assertFalse(again.decided)

  def test_mmzero_rule_and_judge_on_every_item(self):
    scorer = scoring.scorer_for("chartqa", "mmzero", "lmms_eval")
    self.assertEqual(scorer.rule("Blue.", Item("1", "Q", "blue")).score, 1.0)
    self.assertTrue(scorer.needs_judge(graders.Grade("x", 1.0, True)))
    self.assertTrue(mmzero_rules.judge_says_correct("Yes, it matches"))
    self.assertFalse(mmzero_rules.judge_says_correct("\nYes"))

  def test_a_harness_without_the_benchmark_falls_back_to_its_native_one(self):
    self.assertEqual(scoring.scorer_for("mmstar", "lmms_eval", "vlmevalkit").name,
                     "vlmevalkit.can_infer")
    self.assertEqual(scoring.scorer_for("mmmu", "vlmevalkit", "lmms_eval").name,
                     "lmms_eval.mmmu_parser")
    with self.assertRaisesRegex(ValueError, "Unknown harness"):
      scoring.scorer_for("mmstar", "gpt", "vlmevalkit")

  def test_every_profile_departure_is_listed_in_benchmarks_md(self):
    text = " ".join((ROOT / "BENCHMARKS.md").read_text().split())
    for name, departures in profiles.DEPARTURES.items():
      for d in departures:
        self.assertTrue(" ".join(d.split()) in text, f"BENCHMARKS.md lacks {name}: {d}")


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
    self.assertEqual((s["scored_by"], s["judged"]), ("rule-only", None))
    self.assertEqual(s["failures"], {"no_image": 1, "prompt_too_long": 1})
    self.assertAlmostEqual(s["aAcc"], 50.0)
    self.assertAlmostEqual(s["fAcc"], 0.0)     # the figure group has a wrong question
    self.assertAlmostEqual(s["qAcc"], 50.0)
    self.assertAlmostEqual(s["score"], (50.0 + 0.0 + 50.0) / 3)

  def test_rule_only_and_judged_side_by_side(self):
    rows = [{"id": "a", "rule_score": 0.0, "score": 1.0, "reason": "", "judged": True,
             "decided": False, "category": "c", "judge": "j"},
            {"id": "b", "rule_score": 1.0, "score": 1.0, "reason": "", "category": "c"}]
    s = benchmarks.summarise(benchmarks.get_benchmark("mmstar"), rows, judged=True)
    self.assertEqual((s["rule_only"]["score"], s["judged"]["score"], s["score"]),
                     (50.0, 100.0, 100.0))
    self.assertEqual((s["num_judged"], s["num_undecided"], s["judges"]), (1, 1, ["j"]))


class ExtractionAndPromptTest(absltest.TestCase):

  def test_boxed_rules_of_each_profile(self):
    reply = r"first \boxed{A} then \boxed{\text{B}}"
    self.assertEqual(graders.eve_answer(reply), "B")
    self.assertEqual(graders.eve_answer(r"cut at the limit \boxed{C and mo"), "C and mo")
    self.assertEqual(graders.eve_answer(r"\boxed {B}"), r"\boxed {B}")   # not a box for EVE
    self.assertEqual(graders.first_answer_tag_or_boxed(reply), "A")
    self.assertEqual(graders.first_answer_tag_or_boxed(r"<answer>C</answer> \boxed{D}"), "C")
    self.assertEqual(graders.last_flat_boxed(r"\boxed{7} and \boxed{x}"), "x")
    self.assertEqual(profiles.get_profile("eve").answer("  no box  ", "qwen2_5_vl"), "no box")
    self.assertEqual(profiles.get_profile("eve").answer("  no box  ", "qwen3_vl"), "  no box  ")

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
