"""EVE's whole data path with a Challenger that already writes valid programs.

Within a test's budget the tiny model learns to write the programs of one or
two families (tests/eve_recipe_test.py); here the Challenger's replies are
built-in library programs of six families (what a pretrained Challenger would
write) while everything downstream is the real recipe: the sandbox runs them,
questions are built, the frozen (warm-started) Solver's pass rates give
difficulty, rewards and GRPO update the Challenger, the queue admits programs,
logged questions feed a Solver phase trained by GRPO, and the gallery shows
the tasks.
"""
import os
import tempfile

import numpy as np
from absl.testing import absltest
import pytest

from evejax import config_utils
from evejax import observe
from evejax.recipes import eve
from evejax.recipes import runner

import recipe_testing as rt

# Non-seed, non-held-out families whose function text is not a near-duplicate
# of any seed (sentence-BLEU <= 0.25), so each one's first program may enter.
_FAMILIES = ("flip", "mask_cell", "spotlight", "zoom", "slice_shift", "jigsaw_3x3")


def pipeline_config():
  c = config_utils.load_config("configs/eve.py:tiny")
  c.mesh.devices = 1
  c.warmstart.challenger_steps = 0     # the scripted Challenger needs none
  c.warmstart.solver_steps = 40        # sampled replies boxed, pass rate near chance
  c.warmstart.solver_batch_size = 16   # 8 images, 16 questions
  c.eve.iterations = 1
  c.eve.challenger_steps = 2
  c.eve.challenger_prompts = 6
  c.eve.challenger_group = 4
  c.eve.solver_steps = 2
  c.eve.solver_prompts = 8
  c.eve.heldout_eval_questions = 6
  c.checkpoint.every = 100
  return c


@pytest.mark.slow
class PipelineTest(absltest.TestCase):

  def test_valid_programs_are_admitted_and_train_the_solver(self):
    workdir = tempfile.mkdtemp()
    summary = runner.run_recipe(eve.Eve, pipeline_config(), workdir,
                                role_wrappers={"challenger": rt.eve_roles(
                                    pipeline_config(), _FAMILIES)["challenger"]})
    recs = observe.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    challenger = [r for r in recs if "challenger/valid_rate" in r]
    self.assertLen(challenger, 2)
    # Library programs with sampled arguments run and pass the checks.
    self.assertGreater(min(r["challenger/valid_rate"] for r in challenger), 0.8)
    # The warm-started Solver answers in format, so pass rates are informative.
    self.assertGreater(max(r["challenger/solver_pass_rate"] for r in challenger), 0.0)
    self.assertGreater(max(r["challenger/difficulty_mean"] for r in challenger), 0.0)
    # At least one program entered the queue beside the 4 seeds.
    self.assertGreaterEqual(summary["queue"]["queue/admitted"], 1)
    self.assertEqual(summary["queue"]["queue/size"], 4 + summary["queue"]["queue/admitted"])
    self.assertGreaterEqual(sum(r["challenger/admitted"] for r in challenger), 1)
    self.assertTrue(all(np.isfinite(r["challenger/train/loss"]) for r in challenger))
    # Logged questions were selected and the Solver phase trained on them.
    selected = [r["solver_data/selected"] for r in recs if "solver_data/selected" in r]
    self.assertNotEmpty(selected)
    self.assertGreater(selected[0], 0)
    solver = [r for r in recs if "solver/train/loss" in r]
    self.assertLen(solver, 2)
    self.assertNotIn("solver/no_data_steps", summary["counts"])
    # The Solver phase rebuilds logged questions exactly as they were scored.
    with runner.Runner(eve.Eve, pipeline_config(), workdir) as again:   # restores the run's end
      recs = dict(enumerate(again.recipe.solver_data.records[:6]))
      rebuilt = again.recipe._logged_questions(again.recipe._rerun_programs(recs))
    self.assertNotEmpty(recs)
    self.assertEqual(sorted(rebuilt), sorted(recs))
    for rec, q in ((recs[i], rebuilt[i]) for i in recs):
      self.assertEqual((q.qtype, q.answer, q.meta["order"]), (rec["qtype"], rec["answer"], rec["order"]))
    # The gallery shows executed tasks with their programs.
    html = open(os.path.join(workdir, "gallery", "iter1.html")).read()
    self.assertIn("def edit_image", html)
    self.assertIn("<img", html)


if __name__ == "__main__":
  absltest.main()
