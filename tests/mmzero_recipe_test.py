"""MM-Zero on the recipe core: the filters, rewards reaching the right rows with
scripted roles, and a shortened tiny run that renders, trains all three roles,
writes the gallery and the chart, and resumes mid-phase exactly."""
import os

import numpy as np
from absl.testing import absltest
import pytest

from evejax.data import mmzero_library as library
from evejax.recipes import mmzero
from evejax.recipes import mmzero_tasks as tasks
from evejax.recipes import runner
from evejax.recipes import schedule
from evejax.rewards import mmzero as rewards

import recipe_testing as rt

ITEM = library.make_item("bar_chart", np.random.default_rng(3), n=3)
BROKEN = "```svg\n<svg xmlns='http://www.w3.org/2000/svg'><rect\n```"


def short_config(**overrides):
  return rt.short_config("configs/mmzero.py:tiny", **overrides)


def _render(ok: bool, easy=(), hard=()):
  return tasks.Render("", np.zeros((4, 4, 3), np.uint8) if ok else None,
                       "ok" if ok else "syntax_error", list(easy), list(hard))


class FilterTest(absltest.TestCase):

  def test_coder_band(self):
    band = (0.25, 0.75)
    for rendered, kept in (([1, 0, 0, 0], True), ([1, 1, 1, 0], True), ([1, 1, 1, 1], False),
                           ([0, 0, 0, 0], False), ([1, 0], True), ([], False)):
      with self.subTest(rendered):
        self.assertEqual(mmzero.in_coder_band([_render(bool(x)) for x in rendered], band)[0],
                         kept)

  def test_solver_items_and_silver_labels(self):
    easy_ok = ["4"] * 6 + ["5"] * 4          # consistency 0.6 >= 0.5
    cases = (
        # hard answers, kept, silver
        (["7"] * 5 + ["8"] * 3 + ["9"] * 2, True, "7"),     # c = 0.5: in [0.25, 0.75]
        (["7"] * 9 + ["8"], False, "7"),                   # c = 0.9: too easy
        (["7", "8", "9", "1", "2", "3", "4", "5", "6", "0"], False, "7"),   # c = 0.1
        (["7"] * 3 + ["none"] * 7, False, "7"),            # non-answers are no votes: c = 1
        (["x"] * 2 + ["y"] * 3 + ["z"] * 3 + ["w"] * 2, True, "y"),  # ties: the first formed
    )
    for hard, kept, silver in cases:
      with self.subTest(hard):
        got = mmzero.solver_item(_render(True, easy_ok, hard), 0.5, (0.25, 0.75))
        self.assertEqual(got[:2], (kept, silver))
    # The easy question must agree: 0.4 < 0.5 drops the item.
    got = mmzero.solver_item(_render(True, ["4"] * 4 + ["5"] * 3 + ["6"] * 3,
                                     ["7"] * 5 + ["8"] * 5), 0.5, (0.25, 0.75))
    self.assertFalse(got[0])
    self.assertFalse(mmzero.solver_item(_render(False), 0.5, (0.25, 0.75))[0])


class ScriptedPhasesTest(absltest.TestCase):

  def test_rewards_reach_their_rows_and_an_empty_pool_is_skipped(self):
    log = []
    proposal = tasks.proposal_text(ITEM)
    wrap = {
        # Every other proposal cannot be parsed.
        "proposer": rt.recording(
            log, lambda i, g, rng: proposal if g % 2 == 0 else "no tags here"),
        # Half the codes render: the library item's SVG, or a broken document.
        "coder": rt.recording(
            log, lambda i, g, rng: tasks.coder_target(ITEM.svg) if g % 2 == 0 else BROKEN),
        # The Solver always answers the easy answer: s = 1, c = 1 (too easy).
        "solver": rt.recording(
            log, lambda i, g, rng: f"<think>x</think>\\boxed{{{ITEM.easy_answer}}}"),
    }
    config = short_config(**{
        "warmstart.enabled": False, "mmzero.iterations": 1, "mmzero.proposer_steps": 1,
        "mmzero.coder_steps": 1, "mmzero.solver_steps": 1, "mmzero.proposer_prompts": 2,
        "mmzero.proposer_group": 4, "mmzero.coder_samples": 4, "mmzero.coder_pool": 3,
        "mmzero.coder_prompts": 2, "mmzero.solver_pool": 3, "mmzero.heldout_items": 2,
        "mmzero.heldout_coder_samples": 1})
    summary = runner.run_recipe(mmzero.MmZero, config, rt.tempdir(self), role_wrappers=wrap)

    updates = {name: values for name, values in log}
    # Proposer: unparseable rows get -1; the parsed ones the reward of N = 4 codes,
    # 2 rendered, each with s = 1 and c = 1, by rewards.proposer_rewards.
    texts = [proposal if g % 2 == 0 else "no tags here" for _ in range(2) for g in range(4)]
    outcome = [rewards.RenderOutcome(True, 1.0, 1.0), rewards.RenderOutcome(False)] * 2
    want = [x.value for x in rewards.proposer_rewards(
        texts, [outcome if t == proposal else [] for t in texts])]
    np.testing.assert_allclose(updates["proposer"], want, rtol=1e-6)
    self.assertEqual([v for v, t in zip(want, texts) if t != proposal], [-1.0] * 4)
    # (1/4) * 2 * (min(1, .5) + 0) - 0.3 (too easy) - the diversity of identical proposals.
    parsed = [v for v, t in zip(want, texts) if t == proposal]
    self.assertLess(parsed[0], 0.2)
    # Coder: its data are the proposals rendered 2 of 4 times (0.5, in the band);
    # rows that render earn 1 + s + min(c, 1 - c) = 2, broken SVG the -0.1 penalty.
    np.testing.assert_allclose(updates["coder"], [2.0, -0.1, 2.0, -0.1] * 2, rtol=1e-6)
    # Solver: answers that always agree are too easy (c = 1): no item, the step skipped.
    self.assertNotIn("solver", updates)
    self.assertEqual(summary["counts"]["solver/no_data_steps"], 1)


class ScriptedResumeTest(absltest.TestCase):

  def test_exact_resume_mid_coder_phase(self):
    config = short_config(**{**rt.MMZERO_WIRING, "mmzero.coder_steps": 2,
                             "mmzero.solver_steps": 2, "mmzero.solver_samples": 4,
                             "mmzero.solver_select_samples": 4})
    recs = rt.check_resume(self, mmzero.MmZero, config, rt.mmzero_roles(), "coder", 1, (
        "coder/reward/mean", "coder/train/loss", "solver/reward/mean", "solver/train/loss",
        "coevolution/render_success", "eval/coder_render_success"))
    self.assertLen([r for r in recs if "coder/train/loss" in r], 2)


@pytest.mark.slow
class ShortRunTest(absltest.TestCase):

  def test_tiny_run_renders_trains_all_roles_and_resumes_mid_phase(self):
    config = short_config(**{
        "warmstart.proposer_steps": 30, "warmstart.coder_steps": 30,
        "warmstart.solver_steps": 20, "mmzero.iterations": 1, "mmzero.proposer_steps": 2,
        "mmzero.coder_steps": 2, "mmzero.solver_steps": 1, "mmzero.heldout_items": 7,
        "mmzero.heldout_coder_samples": 1, "checkpoint.every": 1, "checkpoint.keep": 1000})
    root = rt.tempdir(self)
    full = os.path.join(root, "full")
    summary = runner.run_recipe(mmzero.MmZero, config, full)
    recs = rt.records(full)
    proposer = [x for x in recs if "proposer/train/loss" in x]
    self.assertLen(proposer, 2)
    self.assertTrue(any("warmstart/coder/loss" in x for x in recs))
    self.assertIn("1", summary["curves"])
    self.assertIn("heldout_gain_points", summary)
    self.assertTrue(os.path.getsize(os.path.join(full, "coevolution.png")) > 1000)
    self.assertTrue(os.path.exists(os.path.join(full, "gallery", "iter1.html")))
    reasons = [k for k in summary["counts"] if k.startswith("sandbox/")]
    self.assertNotEmpty(reasons)   # renders ran in the sandbox (and some failed, counted)

    stages = mmzero.MmZero.stages(config)
    first = next(i for i, s in enumerate(stages) if s.kind == "proposer")
    part = os.path.join(root, "part")
    rt.copy_checkpoints(full, part, schedule.Schedule(stages).units_done((first, 1)))
    with runner.Runner(mmzero.MmZero, config, part) as resumed:
      self.assertEqual(resumed.run.cursor, (first, 1))
      resumed.run_schedule()
    rt.assert_same_by_step(self, recs, rt.records(part), (
        "proposer/reward/mean", "proposer/train/loss", "eval/coder_render_success"))


if __name__ == "__main__":
  absltest.main()
