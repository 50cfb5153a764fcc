"""EVE recipe: the schedule, its wiring with scripted roles (library programs
through the real sandbox, queue, rewards and GRPO; logged questions rebuilt
exactly), a shortened end-to-end tiny run, and resume mid-phase."""
import json
import os
import types

from absl.testing import absltest
import pytest

from evejax import config_utils
from evejax.recipes import eve
from evejax.recipes import runner
from evejax.recipes import schedule

import recipe_testing as rt


def tiny_config():
  return config_utils.load_config("configs/eve.py:tiny")


def short_config():
  """A few minutes on CPU: the Challenger memorises one short non-seed family.

  The Solver's warm start is the preset's: a weaker one answers almost nothing
  right at T=1, so no program would reach the queue's difficulty band and no
  question would be logged for the Solver phase.
  """
  c = tiny_config()
  c.mesh.devices = 1
  c.warmstart.challenger_steps = 100
  c.warmstart.challenger_families = ("roll",)
  c.eve.iterations = 1
  c.eve.challenger_steps = 2
  c.eve.solver_steps = 1
  c.eve.challenger_prompts = 6
  c.eve.challenger_group = 4
  c.eve.solver_prompts = 4
  c.eve.heldout_eval_questions = 6
  c.processing.length_buckets = (768,)
  c.processing.batch_buckets = (8, 16, 32)
  c.sampling.challenger.max_new_tokens = 320
  # The resume check restarts after the first Challenger step: save there
  # (stage ends are always saved), not after each of the ~150 warm-start steps.
  c.checkpoint.every = _first_challenger_step(c)[1]
  c.checkpoint.keep = 1000
  return c


def _first_challenger_step(c):
  """(stage index, checkpoint position) of the end of the first Challenger step."""
  stages = eve.Eve.stages(c)
  first = next(i for i, st in enumerate(stages) if st.kind == "challenger")
  return first, schedule.Schedule(stages).units_done((first, 1))


class ScheduleTest(absltest.TestCase):

  def test_order_of_stages(self):
    c = tiny_config()
    c.eve.iterations = 2
    names = [s.name for s in eve.Eve.stages(c)]
    self.assertEqual(names, [
        "eval/iter0", "warmstart/challenger/iter0", "warmstart/solver/iter0", "eval/iter0",
        "challenger/challenger/iter1", "solver/solver/iter1", "eval/iter1",
        "challenger/challenger/iter2", "solver/solver/iter2", "eval/iter2"])
    # Evaluations take no train step; every step and stage end is a checkpoint unit.
    sched = schedule.Schedule(eve.Eve.stages(c))
    self.assertEqual(sched.train_steps_done((4, 0)), 120 + 40)
    self.assertEqual(sched.units_done((4, 0)), 1 + 1 + 121 + 41 + 2)
    c.warmstart.enabled = False
    self.assertEqual(eve.Eve.stages(c)[1].name, "challenger/challenger/iter1")

  def test_a_bad_choice_is_one_error_naming_its_key(self):
    for key, value in (("solver_questions", "both"), ("option_order", "random")):
      c = tiny_config()
      c.eve[key] = value
      stand_in = types.SimpleNamespace(config=c, add_roles=lambda specs: None)
      with self.assertRaisesRegex(ValueError, f"config.eve.{key}='{value}': use"):
        eve.Eve(stand_in)

  def test_the_solver_may_learn_at_its_own_rate(self):
    c = tiny_config()
    lrs = lambda: {s.name: s.train_config(c).optimizer.lr for s in eve.Eve.role_specs(c)}  # noqa: E731
    self.assertEqual(lrs(), {"challenger": 3e-5, "solver": 3e-5})
    c.eve.solver_lr = 1e-3
    self.assertEqual(lrs(), {"challenger": 3e-5, "solver": 1e-3})
    self.assertEqual(c.train.optimizer.lr, 3e-5)   # the run's config is left as it is
    c.eve.share_params = True
    with self.assertRaisesRegex(ValueError, "solver_lr=0.001 with config.eve.share_params"):
      eve.Eve.role_specs(c)

  def test_evaluation_asks_the_types_trained_on(self):
    for preset, want in (("tiny", (0, 1)), ("painted", (1,)), ("painted_palette", (1,))):
      c = config_utils.load_config(f"configs/eve.py:{preset}")
      self.assertEqual(eve.Eve._eval_types.fget(types.SimpleNamespace(config=c)), want, preset)
    c = tiny_config()
    c.eve.question_types = (2,)   # type 2 is not evaluated: both others are
    self.assertEqual(eve.Eve._eval_types.fget(types.SimpleNamespace(config=c)), (0, 1))


class ScriptedRunTest(absltest.TestCase):
  """EVE's wiring with scripted roles (library programs, guessed letters): programs
  run in the sandbox, pass rates reach the rewards, the queue admits, the Solver
  phase trains on logged questions, and a resume mid-phase is exact."""

  def test_wiring_and_exact_resume_mid_challenger_phase(self):
    config = rt.short_config("configs/eve.py:tiny", **{
        "warmstart.enabled": False, "eve.iterations": 1, "eve.challenger_steps": 2,
        "eve.challenger_prompts": 4, "eve.challenger_group": 2, "eve.difficulty_samples": 4,
        "eve.solver_steps": 2, "eve.solver_prompts": 4, "eve.solver_group": 2,
        "eve.heldout_eval_questions": 4, "log.tensorboard": False})
    # One row writes an empty code block: no sandbox run, a counted format failure.
    root, roles = rt.tempdir(self), rt.eve_roles(config, empty_code={(1, 1)})
    recs = rt.check_resume(self, eve.Eve, config, roles, "challenger", 1, (
        "challenger/reward/mean", "challenger/reward/difficulty", "challenger/valid_rate",
        "challenger/train/loss", "challenger/queue/size", "solver/reward/mean",
        "solver/train/loss", "eval/heldout_accuracy"), root=root)
    challenger = [r for r in recs if "challenger/valid_rate" in r]
    self.assertGreater(min(r["challenger/valid_rate"] for r in challenger), 0.5)
    self.assertGreaterEqual(max(r.get("counts/challenger/empty_code_block", 0) for r in recs), 1)
    self.assertGreater(max(r["challenger/difficulty_mean"] for r in challenger), 0.0)
    self.assertGreaterEqual(sum(r["challenger/admitted"] for r in challenger), 1)
    self.assertTrue(any(r["solver_data/selected"] > 0 for r in recs if "solver_data/selected" in r))
    self.assertLen([r for r in recs if "solver/train/loss" in r], 2)
    # The Solver phase rebuilds logged questions exactly as they were scored.
    with runner.Runner(eve.Eve, config, os.path.join(root, "full"), role_wrappers=roles) as again:
      logged = dict(enumerate(again.recipe.solver_data.records[:6]))
      rebuilt = again.recipe._logged_questions(again.recipe._rerun_programs(logged))
    self.assertNotEmpty(logged)
    self.assertEqual(sorted(rebuilt), sorted(logged))
    for rec, q in ((logged[i], rebuilt[i]) for i in logged):
      self.assertEqual((q.qtype, q.answer, q.meta["order"]),
                       (rec["qtype"], rec["answer"], rec["order"]))


@pytest.mark.slow
class EndToEndTest(absltest.TestCase):

  def test_short_tiny_run_and_resume_mid_phase(self):
    root = rt.tempdir(self)
    full = os.path.join(root, "full")
    summary = runner.run_recipe(eve.Eve, short_config(), full)

    # The loop ran end to end: the warm-started Challenger wrote programs that
    # passed the sandbox's checks, at least one entered the queue, the Solver
    # phase trained on the logged questions, the gallery shows the tasks.
    recs = rt.records(full)
    challenger = [r for r in recs if "challenger/valid_rate" in r]
    self.assertLen(challenger, 2)
    valid = sum(r["challenger/valid_rate"] * r["challenger/rows"] for r in challenger)
    rows = sum(r["challenger/rows"] for r in challenger)
    self.assertGreater(valid / rows, 0.25)
    admitted = sum(r["challenger/admitted"] for r in challenger)
    self.assertGreaterEqual(admitted, 1)
    self.assertEqual(summary["queue"]["queue/size"], 4 + admitted)   # seeds are kept
    solver = [r for r in recs if "solver/train/loss" in r]
    self.assertLen(solver, 1)
    self.assertNotIn("solver/no_data_steps", summary["counts"])
    self.assertTrue(any("challenger/train/loss" in r for r in recs))
    self.assertTrue(any("warmstart/challenger/loss" in r for r in recs))
    self.assertTrue(any("warmstart/solver/loss" in r for r in recs))
    for key in ("init", "after_warmstart", "iter1"):
      self.assertIn("heldout_accuracy", summary[key])
    self.assertIn("heldout_gain_points", summary)
    html = open(os.path.join(full, "gallery", "iter1.html")).read()
    self.assertIn("EVE tasks", html)
    self.assertIn("np.roll", html)   # a card holds the program that made its task

    # Resume in the middle of the Challenger phase: a workdir holding only the
    # checkpoints up to the end of its first step continues from there and
    # logs the same metrics as the uninterrupted run.
    first, position = _first_challenger_step(short_config())
    part = os.path.join(root, "part")
    rt.copy_checkpoints(full, part, position)
    with runner.Runner(eve.Eve, short_config(), part) as resumed:
      self.assertEqual(resumed.run.cursor, (first, 1))
      resumed.run_schedule()
    rt.assert_same_by_step(self, recs, rt.records(part), (
        "challenger/reward/mean", "challenger/valid_rate", "challenger/train/loss",
        "eval/heldout_accuracy"))
    self.assertEqual(json.load(open(os.path.join(part, "summary.json")))["queue"],
                     summary["queue"])


if __name__ == "__main__":
  absltest.main()
