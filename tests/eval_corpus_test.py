"""evejax's rules agree with the references' own code on a corpus of tricky replies.

tests/eval_corpus.json holds replies (refusals, several letters, option text for
a letter, units, percent, commas, truncated and empty replies, the quirks of
each rule) with the verdict the reference's own code gave each (its `_source`
says which code, which version, which function). Every case must agree. The
departures from a reference are documented decisions (profiles.DEPARTURES);
the one that touches a rule's output, MMMU's seeded random pick, is compared
as what it is: undecided.
"""
import collections
import json
import pathlib

from absl.testing import absltest

from evejax.eval import lmms_eval_rules
from evejax.eval import mmzero_rules
from evejax.eval import profiles
from evejax.eval import scoring
from evejax.eval import vlmevalkit_rules
from evejax.eval.records import Item

CORPUS = json.loads((pathlib.Path(__file__).parent / "eval_corpus.json").read_text())
HARNESS = {"mmstar": "vlmevalkit", "hallusion": "vlmevalkit", "mathvista": "vlmevalkit",
           "chartqa": "lmms_eval", "ai2d": "lmms_eval", "mmmu": "lmms_eval"}


def cases(benchmark):
  return [c for c in CORPUS["cases"] if c["benchmark"] == benchmark]


def item_of(case, k=0):
  spec = case["item"]
  return Item(id=f"{case['benchmark']}-{k}", question="Q", answer=spec.get("answer", ""),
              options=dict(spec.get("options", {})), answer_type=spec.get("answer_type", ""),
              precision=spec.get("precision"))


def rule_verdict(case, k=0):
  """evejax's verdict: the profile's reading of the reply, then the harness's rule."""
  bench = case["benchmark"]
  harness = case["item"].get("harness", HARNESS[bench])
  profile = {"vlmevalkit": "eve", "lmms_eval": "evolmm"}[harness]
  family = case["item"].get("family", "qwen3_vl")
  # lmms-eval cases are replies as lmms-eval receives them (after EvoLMM's extraction).
  answer = (profiles.get_profile(profile).answer(case["reply"], family)
            if harness == "vlmevalkit" else case["reply"])
  return scoring.scorer_for(bench, harness, HARNESS[bench]).rule(answer, item_of(case, k))


class CorpusTest(absltest.TestCase):

  def test_each_benchmark_has_at_least_thirty_replies(self):
    counts = collections.Counter(c["benchmark"] for c in CORPUS["cases"])
    for bench in HARNESS:
      self.assertGreaterEqual(counts[bench], 30, bench)

  def _check(self, benchmark, fields):
    wrong = []
    for k, case in enumerate(cases(benchmark)):
      g = rule_verdict(case, k)
      got = {"correct": g.score > 0, "decided": g.decided, "extracted": g.extracted}
      want = case["verdict"]
      if not want.get("decided", True):
        fields_here = [f for f in fields if f == "decided"]   # a chance pick is not compared
      else:
        fields_here = fields
      diff = {f: (got[f], want[f]) for f in fields_here if f in want and got[f] != want[f]}
      if diff:
        wrong.append((case["reply"], case["item"], diff))
    self.assertEqual(wrong, [], f"{len(wrong)} of {len(cases(benchmark))} {benchmark} verdicts "
                                "differ from the reference's")

  def test_mmstar_can_infer_after_eve_post_processing(self):
    self._check("mmstar", ("correct", "decided", "extracted"))

  def test_hallusion_yes_no(self):
    self._check("hallusion", ("correct", "decided", "extracted"))

  def test_mathvista_vlmevalkit_and_lmms_eval(self):
    self._check("mathvista", ("correct", "decided"))

  def test_chartqa_relaxed_correctness(self):
    self._check("chartqa", ("correct",))

  def test_ai2d_filter_and_exact_match(self):
    self._check("ai2d", ("correct", "extracted"))

  def test_mmmu_parser(self):
    # The random fallback's letter is seeded here (a documented departure): only
    # its being undecided is compared.
    self._check("mmmu", ("correct", "decided", "extracted"))

  def test_eve_boxed_post_processing(self):
    for case in cases("boxed"):
      got = vlmevalkit_rules.eve_post_process(case["reply"], case["item"]["family"])
      self.assertEqual(got, case["verdict"]["answer"], (case["reply"], case["item"]))

  def test_mathvista_judge_outputs(self):
    for k, case in enumerate(cases("mathvista_judge")):
      bench_harness = case["item"].get("harness", "vlmevalkit")
      scorer = scoring.scorer_for("mathvista", bench_harness, "vlmevalkit")
      got = scorer.read_judge(item_of(case, k), case["reply"]).score > 0
      self.assertEqual(got, case["verdict"]["correct"], (case["reply"], case["item"]))

  def test_mmzero_judge_outputs(self):
    for case in cases("mmzero_judge"):
      self.assertEqual(mmzero_rules.judge_says_correct(case["reply"]), case["verdict"]["correct"],
                       repr(case["reply"]))


class JudgePromptTest(absltest.TestCase):
  """evejax's judge prompts are the references' texts, byte for byte."""

  def test_prompts(self):
    by_kind = collections.defaultdict(list)
    for p in CORPUS["judge_prompts"]:
      by_kind[p["kind"]].append(p)
    for p in by_kind["vlmevalkit.mcq"]:
      self.assertEqual(vlmevalkit_rules.mcq_judge_prompt(p["question"], p["options"],
                                                         p["prediction"]), p["prompt"])
    for p in by_kind["vlmevalkit.yes_no"]:
      self.assertEqual(vlmevalkit_rules.yes_no_judge_prompt(p["question"], p["prediction"]),
                       p["prompt"])
    for p in by_kind["vlmevalkit.mathvista"]:
      self.assertEqual(vlmevalkit_rules.mathvista_judge_prompt(p["question"], p["prediction"]),
                       p["prompt"])
    for p in by_kind["lmms_eval.mathvista"]:
      self.assertEqual(lmms_eval_rules.mathvista_judge_prompt(p["question"], p["prediction"]),
                       p["prompt"])
    for p in by_kind["mmzero"]:
      shown = mmzero_rules.judge_answer(p["extracted"], p["reply"])
      self.assertEqual(mmzero_rules.judge_prompt(p["question"], p["gold"], shown), p["prompt"])
    self.assertEqual(len(by_kind), 5)


if __name__ == "__main__":
  absltest.main()
