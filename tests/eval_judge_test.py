"""The judge: a judged evaluation of the tiny model, the local judge, the callable hook.

The judge here is another random tiny checkpoint, so these tests check the
plumbing (which items reach the judge, with which prompt and budget, how its
text becomes a verdict, what the summaries hold), not the verdicts; the prompts
themselves are checked byte for byte in tests/eval_corpus_test.py.
"""
import copy
import json
import os
import shutil

from absl.testing import absltest
import numpy as np

from evejax import config_utils
from evejax.eval import __main__ as eval_main
from evejax.eval import cli
from evejax.eval import evaluator as evaluator_lib
from evejax.eval import judge as judge_lib
from evejax.eval import scoring
from evejax.eval import vlmevalkit_rules
from evejax.eval.records import Item
import eval_runner_test as runner_test  # the tiny checkpoint and TSV writers

COLOURS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}


class FixedJudge:
  """A judge that answers every request with one text (records what it was asked)."""

  def __init__(self, text):
    self.text, self.name, self.asked = text, "fixed", []

  def describe(self):
    return {"kind": "fixed"}

  def complete(self, requests, seed=0):
    self.asked.extend(requests)
    return [self.text] * len(requests)


class JudgedEvaluationTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp, cls.data, cls.hf_dir = runner_test.workspace()
    cls.judge_dir = runner_test.write_tiny_hf_checkpoint(os.path.join(cls.tmp, "judge_hf"),
                                                         seed=11)
    cls.config = runner_test.eval_config(**{
        "eval.data_dir": cls.data, "mesh.devices": 1, "eval.chunk_size": 4,
        "init.hf_dir": cls.hf_dir, "eval.judge.hf_dir": cls.judge_dir,
        "eval.judge.dtype": "float32", "eval.judge.param_dtype": "float32",
        "eval.judge.length_buckets": (1024,), "eval.judge.max_new_tokens": 32})
    cls.out = os.path.join(cls.tmp, "judged")
    cls.summaries = cli.run(cls.config, cls.out)
    cls.rows = runner_test.read_rows(cls.out)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_summary_json_holds_rule_only_and_judged_scores(self):
    with open(os.path.join(self.out, "mmstar", "summary.json")) as f:
      s = json.load(f)
    counted = [r for r in self.rows.values() if r["reason"] != "no_image"]
    mean = lambda key: 100.0 * sum(r[key] for r in counted) / len(counted)
    self.assertAlmostEqual(s["rule_only"]["score"], mean("rule_score"))
    self.assertAlmostEqual(s["judged"]["score"], mean("score"))
    self.assertEqual((s["score"], s["scored_by"]), (s["judged"]["score"], "judge"))
    undecided = [r for r in counted if not r["reason"] and not r["decided"]]
    self.assertGreater(len(undecided), 0)   # the random model rarely names a letter
    self.assertEqual(s["num_judged"], len(undecided))
    self.assertEqual(s["profile"]["judge"]["model"], self.judge_dir)
    self.assertIn("GPT matcher", s["profile"]["judge"]["stands_in_for"])
    with open(os.path.join(self.out, "summary.json")) as f:
      overview = json.load(f)["benchmarks"]["mmstar"]
    self.assertEqual((overview["rule_only"], overview["judged"]), (s["rule_only"], s["judged"]))
    with open(os.path.join(self.out, "summary.md")) as f:
      self.assertIn("| rule-only | judged |", f.read())

  def test_judged_rows_record_the_judge_and_read_it_as_the_reference(self):
    for r in self.rows.values():
      if not r.get("judged"):
        self.assertTrue(r["reason"] or r["decided"])
        continue
      self.assertIn(self.judge_dir, r["judge"])
      self.assertIsInstance(r["judge_output"], str)
      letter = vlmevalkit_rules.can_infer(r["judge_output"], COLOURS)
      if letter:
        self.assertEqual(r["judge_extracted"], letter)
      else:   # the reference's last resort: a seeded pick among the options and Z
        self.assertIn(r["judge_extracted"], "ABCDZ")
      self.assertEqual(r["score"], float(r["judge_extracted"] == r["gold"]))

  def test_a_judge_prompt_over_the_buckets_keeps_the_rule_verdict(self):
    config = copy.deepcopy(self.config)
    config.eval.judge.length_buckets = (32,)
    out = os.path.join(self.tmp, "tight_judge")
    summary = cli.run(config, out)[0]
    self.assertEqual(summary["num_judged"], 0)
    self.assertEqual(summary["num_judge_skipped"], summary["num_undecided"])
    self.assertEqual(summary["judged"]["score"], summary["rule_only"]["score"])

  def test_local_judge_chat_raw_budget_and_newline_stop(self):
    judge = judge_lib.from_config(self.config)
    requests = [scoring.JudgeRequest("Is red a colour?", max_new_tokens=4),
                scoring.JudgeRequest("Is red a colour?", chat=False, max_new_tokens=16,
                                     stop_at_newline=True),
                scoring.JudgeRequest("word " * 2000)]
    chat, raw = judge.example(requests[0]), judge.example(requests[1])
    self.assertEqual(list(raw.tokens), judge.tokenizer.encode("Is red a colour?"))
    self.assertGreater(chat.num_tokens, raw.num_tokens)   # the chat template around it
    out = judge.complete(requests)
    self.assertIsNone(out[2])
    self.assertNotIn("\n", out[1])
    # A request's text does not depend on the budgets of the others in its batch.
    longer = scoring.JudgeRequest("Is red a colour?", max_new_tokens=16)
    self.assertEqual(judge.complete([requests[0], longer])[0], out[0])
    self.assertTrue(judge.complete([longer])[0].startswith(out[0]))


class EvaluatorJudgeScopeTest(absltest.TestCase):
  """Which rows reach the judge, per scorer, without sampling (replies given)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = runner_test.eval_config(**{"mesh.devices": 1})
    cls.loaded, _ = cli.load(cls.config)
    cls.sampler = cli.make_sampler(cls.config, cls.loaded, 8)

  def evaluator(self, bench, profile, judge):
    return evaluator_lib.Evaluator(bench, profile, model_config=self.loaded.model_config,
                                   tokenizer=self.loaded.tokenizer, sampler=self.sampler,
                                   max_new_tokens=8, judge=judge)

  def graded(self, ev, items, replies):
    prepared = [evaluator_lib.Prepared(it, ev.profile.prompt(it, ev.benchmark.style))
                for it in items]
    rows = [ev.grade(p, r) for p, r in zip(prepared, replies)]
    ev.judge_rows(prepared, rows)
    return rows

  def test_eve_judges_only_undecided_items(self):
    judge = FixedJudge("The answer is C")
    ev = self.evaluator("mmstar", "eve", judge)
    items = [Item(str(k), "What colour?", "C", options=COLOURS) for k in range(3)]
    rows = self.graded(ev, items, [r"\boxed{C}", "hmm", r"\boxed{A}"])
    self.assertEqual([r.get("judged", False) for r in rows], [False, True, False])
    self.assertEqual([r["score"] for r in rows], [1.0, 1.0, 0.0])
    self.assertEqual([r["rule_score"] for r in rows], [1.0, 0.0, 0.0])
    self.assertEqual(judge.asked[0].prompt,
                     vlmevalkit_rules.mcq_judge_prompt("What colour?", COLOURS, "hmm"))
    self.assertEqual(judge.asked[0].max_new_tokens, 32)

  def test_mmzero_judges_every_item_with_raw_prompts(self):
    judge = FixedJudge("yes")
    ev = self.evaluator("chartqa", "mmzero", judge)
    items = [Item(str(k), "How many bars?", "7") for k in range(2)]
    rows = self.graded(ev, items, [r"so \boxed{7}", "no box here"])
    self.assertTrue(all(r["judged"] for r in rows))
    self.assertEqual([r["rule_score"] for r in rows], [1.0, 0.0])
    self.assertEqual([r["score"] for r in rows], [1.0, 1.0])
    asked = judge.asked
    self.assertTrue(all(not q.chat and q.stop_at_newline and q.max_new_tokens == 16
                        for q in asked))
    self.assertIn("Question: How many bars?\n\nGold answer: 7\n\nModel answer: 7\n", asked[0].prompt)
    self.assertIn("Model answer: no box here\n", asked[1].prompt)

  def test_lmms_eval_mmmu_has_no_judge(self):
    judge = FixedJudge("B")
    ev = self.evaluator("mmmu", "evolmm", judge)
    items = [Item("1", "Which?", "B", options={"A": "cat", "B": "dog"})]
    rows = self.graded(ev, items, ["?"])
    self.assertFalse(rows[0]["decided"])
    self.assertNotIn("judged", rows[0])
    self.assertEqual(judge.asked, [])

  def test_the_callable_hook_regrades_undecided_items(self):
    calls = []
    def hook(item, reply, grade):
      calls.append((item.id, reply, grade.decided))
      return 0.5
    ev = self.evaluator("mmstar", "eve", hook)
    items = [Item(str(k), "Q", "B", options=COLOURS) for k in range(2)]
    rows = self.graded(ev, items, ["B", "no idea"])
    self.assertEqual(calls, [("1", "no idea", False)])
    self.assertEqual([r["score"] for r in rows], [1.0, 0.5])


class JudgeConfigTest(absltest.TestCase):

  def test_the_old_string_override_gets_one_clear_error(self):
    with self.assertRaisesRegex(config_utils.ConfigError,
                                r"eval.judge is a block.*--config.eval.judge.fn=pkg.mod:fn"):
      eval_main._check_judge_override(["eval.limit=3", "eval.judge=pkg.mod:fn"])
    eval_main._check_judge_override(["eval.judge.hf_dir=/x"])

  def test_a_model_and_a_callable_together_are_refused(self):
    config = runner_test.eval_config(**{"eval.judge.hf_dir": "/x", "eval.judge.fn": "os:getcwd"})
    with self.assertRaisesRegex(judge_lib.JudgeError, "set one of them"):
      judge_lib.check(config)

  def test_an_old_config_with_a_string_judge_still_works(self):
    config = runner_test.eval_config()
    with config.unlocked():
      del config.eval["judge"]
      config.eval.judge = "os.path:basename"
    found = judge_lib.from_config(config)
    self.assertIsInstance(found, judge_lib.CallableJudge)
    self.assertEqual(found.fn("a/b"), "b")
    with self.assertRaisesRegex(judge_lib.JudgeError, "cannot be imported"):
      config.eval.judge = "no.such.module:fn"
      judge_lib.check(config)

  def test_no_judge_by_default(self):
    self.assertIsNone(judge_lib.from_config(runner_test.eval_config()))
    self.assertEqual(np.asarray(runner_test.eval_config().eval.judge.length_buckets).ndim, 1)


if __name__ == "__main__":
  absltest.main()
