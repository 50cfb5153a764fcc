"""EvoLMM on the recipe core: the published update order against a hand trace,
two adapters on one backbone, and a shortened tiny run that resumes exactly."""
import math
import os
import shutil
import tempfile

import jax
import numpy as np
from absl.testing import absltest

from evejax import config_utils
from evejax import observe
from evejax.recipes import evolmm
from evejax.recipes import role as role_lib
from evejax.recipes import runner

SOLVER_ANSWERS = ("red", "red", "red", "blue", "blue")


def short_config(**overrides):
  c = config_utils.load_config("configs/evolmm.py:tiny")
  c.mesh.devices = 1
  c.log.progress = False
  for k, v in overrides.items():
    config_utils.set_value(c, k, v)
  return c


class Recording(role_lib.ScriptedRole):
  """A scripted role that also records every update it makes (its rewards)."""

  def __init__(self, role, reply, log):
    super().__init__(role, reply)
    self.log = log

  def update_rows(self, row_prompts, completions, rewards, **kw):
    self.log.append((self.name, [float(r) for r in rewards]))
    return super().update_rows(row_prompts, completions, rewards, **kw)


class SequentialUpdateTest(absltest.TestCase):

  def test_order_rewards_and_baseline_trace(self):
    log = []
    wrap = {
        "proposer": lambda r: Recording(
            r, lambda i, g, rng: "<question>What colour is it?</question> a colour", log),
        "solver": lambda r: Recording(
            r, lambda i, g, rng: f"<answer>{SOLVER_ANSWERS[g]}</answer>", log),
    }
    config = short_config(**{"warmstart.enabled": False, "evolmm.iterations": 1,
                             "evolmm.update": "sequential", "train.algorithm": "reinforce",
                             "evolmm.images_per_step": 1, "evolmm.proposer_group": 1,
                             "evolmm.proposer_every": 5, "train.optimizer.lr": 1e-3,
                             "evolmm.steps_per_iteration": 5,
                             "evolmm.heldout_questions": 4})
    r = runner.Runner(evolmm.EvoLmm, config, tempfile.mkdtemp(), role_wrappers=wrap)
    r.run_all()

    # Rewards by hand (METHODS.md): p(red) = 0.6, p(blue) = 0.4, no words before the tag.
    solver_r = [0.6 ** 0.7] * 3 + [0.4 ** 0.7] * 2
    h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    proposer_r = math.exp(-(h - 0.9) ** 2 / (2 * 0.35 ** 2))
    # Each step: 5 Solver updates of one sample each; the Proposer only at step 5.
    want = [("solver", [x]) for x in solver_r] * 5
    want.insert(25, ("proposer", [proposer_r]))
    self.assertLen(log, len(want))
    for (name, got), (wname, wvals) in zip(log, want):
      self.assertEqual(name, wname)
      np.testing.assert_allclose(got, wvals, rtol=1e-6)

    # The Solver's EMA baseline, by hand: it starts at the first reward, then
    # b <- 0.9 b + 0.1 r after every update.
    b = None
    for x in solver_r * 5:
      b = x if b is None else 0.9 * b + 0.1 * x
    solver = r.run.policies["solver"].learner
    proposer = r.run.policies["proposer"].learner
    np.testing.assert_allclose(float(solver.state.algorithm_state.baseline.value), b, rtol=1e-5)
    self.assertEqual(solver.step_count, 25)
    self.assertEqual(proposer.step_count, 1)
    np.testing.assert_allclose(float(proposer.state.algorithm_state.baseline.value),
                               proposer_r, rtol=1e-5)
    # beta moved from its start by the adaptive rule (KL is > 0 once adapters move).
    self.assertNotAlmostEqual(float(solver.state.algorithm_state.kl_beta), 1e-3)

    # Two adapters on one backbone, held once; the KL reference is that backbone;
    # optimizer state only for the adapters.
    for a, b_ in zip(jax.tree.leaves(solver.backbone), jax.tree.leaves(proposer.backbone)):
      self.assertIs(a, b_)
    self.assertIs(solver.reference_params, solver.backbone)
    adam = solver.state.opt_state[1][0]
    self.assertEqual(jax.tree.structure(adam.mu), jax.tree.structure(solver.params))
    n_adapter = sum(x.size for x in jax.tree.leaves(solver.params))
    n_backbone = sum(x.size for x in jax.tree.leaves(solver.backbone))
    self.assertLess(n_adapter, n_backbone / 5)


class ShortRunTest(absltest.TestCase):

  def test_tiny_run_learns_and_resumes_mid_iteration(self):
    config = short_config(**{"warmstart.steps": 60, "evolmm.iterations": 2,
                             "evolmm.steps_per_iteration": 3, "evolmm.heldout_questions": 16,
                             "checkpoint.every": 1, "checkpoint.keep": 1000})
    root = tempfile.mkdtemp()
    full = os.path.join(root, "full")
    summary = evolmm.run(config, full)
    for key in ("init", "after_warmstart", "iter1", "iter2"):
      self.assertIn("heldout_accuracy", summary[key])
    # The warm start makes the Solver answer in its format (accuracy above chance).
    self.assertGreater(summary["after_warmstart"]["heldout_accuracy"],
                       summary["init"]["heldout_accuracy"])
    recs = observe.read_jsonl(os.path.join(full, "metrics.jsonl"))
    steps = [x for x in recs if "evolmm/consistency" in x]
    self.assertLen(steps, 6)
    for x in steps:
      self.assertGreater(x["evolmm/distinct_answers"], 0.0)
      self.assertIn("evolmm/solver/train/kl", x)        # against the backbone
      self.assertIn("evolmm/proposer/train/loss", x)   # every step in grpo mode

    # Resume in the middle of iteration 1 from the checkpoints up to its second step.
    stages = evolmm.schedule(config)
    first = next(i for i, s in enumerate(stages) if s.kind == "evolve")
    position = runner.Schedule(stages).units_done((first, 2))
    part = os.path.join(root, "part")
    os.makedirs(os.path.join(part, "checkpoints"))
    for name in os.listdir(os.path.join(full, "checkpoints")):
      if name.isdigit() and int(name) <= position:
        shutil.copytree(os.path.join(full, "checkpoints", name),
                        os.path.join(part, "checkpoints", name))
    resumed = runner.Runner(evolmm.EvoLmm, config, part)
    self.assertEqual(resumed.run.cursor, (first, 2))
    self.assertTrue(resumed.recipe.on_base)
    resumed.run_all()
    after = observe.read_jsonl(os.path.join(part, "metrics.jsonl"))
    for key in ("evolmm/consistency", "evolmm/solver/train/loss", "evolmm/solver_reward",
                "eval/heldout_accuracy"):
      a = {x["step"]: x[key] for x in recs if key in x}
      b = {x["step"]: x[key] for x in after if key in x}
      self.assertNotEmpty(b, key)
      np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(b)],
                                 rtol=1e-5, atol=1e-6, err_msg=key)


if __name__ == "__main__":
  absltest.main()
