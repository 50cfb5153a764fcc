"""The experiment command: arms x seeds from one shared warm start, resumable, one
table and one chart; driven here with scripted MM-Zero roles for a couple of steps."""
import json
import os
import tempfile

from absl.testing import absltest

from evejax import config_utils
from evejax.recipes import mmzero
from evejax.recipes import runner
from evejax.tools import experiment

import recipe_testing as rt

SPEC = "configs/mmzero.py:tiny"
COMMON = rt.MMZERO_WIRING


class ExperimentTest(absltest.TestCase):

  def test_two_arms_one_seed_share_the_warm_start_and_resume(self):
    workdir = tempfile.mkdtemp()
    ran = []

    def run_one(spec, run):   # in process, with scripted roles (no subprocess)
      ran.append((run.arm, os.path.exists(os.path.join(run.workdir, "checkpoints"))))
      config = rt.short_config(spec, **run.overrides)
      runner.run_recipe(mmzero.MmZero, config, run.workdir, role_wrappers=rt.mmzero_roles())

    runs = experiment.plan(SPEC, ["method", "control"], [0], workdir, common=COMMON)
    self.assertEqual([(r.arm, r.seed) for r in runs],
                     [("warmstart", 0), ("method", 0), ("control", 0)])
    self.assertEqual(runs[0].overrides["mmzero.iterations"], 0)
    self.assertEqual(runs[2].overrides["mmzero.coder_proposals"], "library")
    experiment.execute(SPEC, runs, run_one=run_one, log=lambda _: None)
    # Each arm started from a copy of the warm start's last checkpoint.
    self.assertEqual(ran, [("warmstart", False), ("method", True), ("control", True)])

    data = experiment.report(SPEC, runs, workdir, experiment.experiment_metrics(SPEC))
    for arm in ("method", "control"):
      points = data["arms"][arm]["0"]["points"]
      self.assertEqual(sorted(points), ["init", "iter1"])   # init was the warm start's
      self.assertIn("eval/coder_render_success", points["iter1"])
    # The Proposer phase ran in the method only: its curve is the method's.
    self.assertIn("coevolution/render_success", data["arms"]["method"]["0"]["points"]["iter1"])
    self.assertNotIn("coevolution/render_success",
                     data["arms"]["control"]["0"]["points"]["iter1"])
    table = open(os.path.join(workdir, "table.md")).read()
    self.assertIn("| method | iter1 | 1 |", table)
    self.assertIn("| control | iter1 | 1 |", table)
    self.assertGreater(os.path.getsize(os.path.join(workdir, "chart.png")), 1000)
    with open(os.path.join(workdir, "results.json")) as f:
      self.assertEqual(json.load(f)["heldout_metric"], "coder_render_success")

    # Done runs are not run again: the experiment resumes.
    experiment.execute(SPEC, runs, run_one=run_one, log=lambda _: None)
    self.assertLen(ran, 3)

    experiment.write_commands(SPEC, runs, os.path.join(workdir, "commands.sh"))
    commands = open(os.path.join(workdir, "commands.sh")).read()
    self.assertIn("--config.mmzero.coder_proposals=library", commands)
    self.assertIn("--config.mmzero.iterations=0", commands)

  def test_an_arm_that_changes_the_warm_start_is_refused_while_sharing(self):
    arms = {"method": {}, "longer_warm_start": {"warmstart.coder_steps": 3}}
    with self.assertRaisesRegex(config_utils.ConfigError, "longer_warm_start.*warm start"):
      experiment.plan(SPEC, arms, [0], tempfile.mkdtemp())
    # A KL term changes what the warm start's checkpoints hold (its reference).
    with self.assertRaisesRegex(config_utils.ConfigError, "with_kl.*warm start"):
      experiment.plan(SPEC, {"with_kl": {"train.loss.kl_coef": 0.1}}, [0], tempfile.mkdtemp())
    runs = experiment.plan(SPEC, arms, [0], tempfile.mkdtemp(), share_warmstart=False)
    self.assertEqual([r.arm for r in runs], ["method", "longer_warm_start"])
    self.assertIsNone(runs[1].warmstart)

  def test_every_arm_of_every_recipe_applies_to_its_experiment_presets(self):
    for recipe, preset in (("eve", "small"), ("eve", "painted"), ("mmzero", "small"),
                           ("evolmm", "small"), ("evolmm", "grounded")):
      spec = f"configs/{recipe}.py:{preset}"
      arms = experiment.arms_of(spec)
      self.assertIn("method", arms)
      self.assertIn("control", arms)
      for run in experiment.plan(spec, list(arms), [0], tempfile.mkdtemp()):
        with self.subTest(spec=spec, arm=run.arm):
          config = config_utils.load_config(spec, run.overrides)
          self.assertEqual(config.seed, 0)

  def test_mean_and_sample_std(self):
    self.assertEqual(experiment.mean_std([0.25, 0.75]), (0.5, 0.3535533905932738, 2))
    self.assertEqual(experiment.mean_std([0.5]), (0.5, 0.0, 1))

  def test_columns_leave_out_metrics_that_no_run_logged(self):
    points = {"iter1": {"eval/heldout_accuracy": 0.5, "eval/heldout_accuracy_type1": 0.5}}
    data = {"heldout_metric": "heldout_accuracy",
            "metrics": ["eval/heldout_accuracy_type0", "eval/heldout_accuracy_type1"],
            "arms": {"method": {"0": {"points": points}}, "control": {"0": {"points": {}}}}}
    self.assertEqual(experiment._columns(data),  # pylint: disable=protected-access
                     ["eval/heldout_accuracy", "eval/heldout_accuracy_type1"])


if __name__ == "__main__":
  absltest.main()
