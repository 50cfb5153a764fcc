"""EvoLMM on the recipe core: the published update order against a hand trace,
two adapters on one backbone, and a shortened tiny run that resumes exactly."""
import math
import os
import types

import jax
import numpy as np
from absl.testing import absltest
import pytest

from evejax.data import scene_questions
from evejax.recipes import evolmm
from evejax.recipes import evolmm_tasks
from evejax.recipes import runner
from evejax.recipes import schedule

import recipe_testing as rt

SOLVER_ANSWERS = ("red", "red", "red", "blue", "blue")


def short_config(**overrides):
  return rt.short_config("configs/evolmm.py:tiny", **overrides)


class ControlAndHeldoutVotesTest(absltest.TestCase):

  def test_constant_reward_and_votes_of_a_solver_that_ignores_the_image(self):
    log = []
    wrap = {"proposer": rt.recording(
                log, lambda i, g, rng: "<question>What colour is it?</question> a colour"),
            "solver": rt.recording(log, lambda i, g, rng: "<answer>red</answer>")}
    config = short_config(**{"warmstart.enabled": False, "evolmm.iterations": 1,
                             "evolmm.steps_per_iteration": 1, "evolmm.reward": "constant",
                             "evolmm.heldout_questions": 6, "evolmm.heldout_samples": 3})
    summary = runner.run_recipe(evolmm.EvoLmm, config, rt.tempdir(self), role_wrappers=wrap)
    solver_rewards = [v for name, values in log if name == "solver" for v in values]
    self.assertNotEmpty(solver_rewards)
    self.assertEqual(set(solver_rewards), {1.0})   # the control: no signal
    got = summary["iter1"]
    # Always "red": unanimous, one answer, and a sample is as right as the majority.
    self.assertEqual(got["heldout_consistency"], 1.0)
    self.assertEqual(got["heldout_distinct_answers"], 1.0)
    self.assertEqual(got["heldout_sample_accuracy"], got["heldout_majority_accuracy"])
    self.assertEqual(got["heldout_majority_accuracy"], got["heldout_accuracy"])

  def test_shuffled_rewards_are_the_methods_in_another_order(self):
    def rewards_of(reward, replies):
      stand_in = types.SimpleNamespace(config=short_config(**{"evolmm.reward": reward}))
      return [r.value for r in evolmm.EvoLmm._solver_rewards(stand_in, replies)]

    replies = [f"<answer>{a}</answer>" for a in SOLVER_ANSWERS]
    shuffled = rewards_of("shuffled", replies)
    self.assertEqual(sorted(shuffled), sorted(rewards_of("continuous", replies)))
    self.assertEqual(shuffled, rewards_of("shuffled", replies))   # the same after a resume
    # Over several groups the order is not the answers' own: no signal is left.
    groups = [replies[k:] + replies[:k] for k in range(5)]
    self.assertTrue(any(rewards_of("shuffled", g) != rewards_of("continuous", g)
                        for g in groups))

  def test_strict_answer_format_gives_a_malformed_reply_no_reward(self):
    log = []
    # Unanimous, but only a closed tag is an answer: the lone "<answer>" earns 0.
    wrap = {"proposer": rt.recording(
                log, lambda i, g, rng: "<question>What colour is it?</question> a colour"),
            "solver": rt.recording(log, lambda i, g, rng: ("<answer>red</answer>", "<answer>")[g])}
    config = short_config(**{"warmstart.enabled": False, "evolmm.iterations": 1,
                             "evolmm.steps_per_iteration": 1, "evolmm.samples": 2,
                             "evolmm.heldout_questions": 2, "evolmm.answer_format": "tag",
                             "evolmm.scene_shapes": 1,
                             "evolmm.scene_templates": ("color_of_kind",)})
    workdir = rt.tempdir(self)
    runner.run_recipe(evolmm.EvoLmm, config, workdir, role_wrappers=wrap)
    solver_rewards = [v for name, values in log if name == "solver" for v in values]
    self.assertNotEmpty(solver_rewards)
    # The gallery shows the replies as written, the malformed one included.
    with open(os.path.join(workdir, "gallery", "iter1.html")) as f:
      page = f.read()
    self.assertGreater(page.count("&lt;answer&gt;red"), 0)
    self.assertEqual(page.count("&lt;answer&gt;"), 2 * page.count("&lt;answer&gt;red"))
    # r = p^0.7 for the tagged reply (share 1/2), 0 for the malformed one.
    self.assertEqual(sorted(set(round(v, 4) for v in solver_rewards)),
                     [0.0, round(0.5 ** 0.7, 4)])
    with self.assertRaisesRegex(ValueError, "config.evolmm.answer_format='xml'"):
      runner.run_recipe(evolmm.EvoLmm, short_config(**{"evolmm.answer_format": "xml"}),
                        rt.tempdir(self))

  def test_solver_alone_answers_scene_questions_and_no_proposer_is_asked(self):
    log = []

    def no_proposer(i, g, rng):
      raise AssertionError("questions='scenes' sampled the Proposer")

    wrap = {"proposer": rt.recording(log, no_proposer),
            "solver": rt.recording(
                log, lambda i, g, rng: ("<answer>red</answer>", "<answer>blue</answer>")[g % 2])}
    config = short_config(**{"warmstart.enabled": False, "evolmm.iterations": 1,
                             "evolmm.steps_per_iteration": 2, "evolmm.questions": "scenes",
                             "evolmm.heldout_questions": 2,
                             "evolmm.scene_templates": ("color_of_kind",)})
    workdir = rt.tempdir(self)
    runner.run_recipe(evolmm.EvoLmm, config, workdir, role_wrappers=wrap)
    self.assertEqual({name for name, _ in log}, {"solver"})
    self.assertLen(log, 2)   # one GRPO update a step
    # 3 of 5 answers red, 2 blue: r = p^0.7 (METHODS.md), no words before the tag.
    n = config.evolmm.images_per_step * config.evolmm.proposer_group
    red, blue = round(0.6 ** 0.7, 4), round(0.4 ** 0.7, 4)
    for _, got in log:
      self.assertEqual([round(v, 4) for v in got], [red, blue, red, blue, red] * n)
    with open(os.path.join(workdir, "gallery", "iter1.html")) as f:
      self.assertIn("What colour is the ", f.read())
    for bad, message in ((("evolmm.questions", "library"), "config.evolmm.questions='library'"),
                         (("data.kind", "builtin"), "set config.data.kind='scenes'")):
      with self.assertRaisesRegex(ValueError, message):
        runner.run_recipe(evolmm.EvoLmm, short_config(**{"evolmm.questions": "scenes",
                                                         bad[0]: bad[1]}), rt.tempdir(self))

  def test_scene_layout_options_reach_every_scene_the_recipe_draws(self):
    config = short_config(**{"warmstart.enabled": False, "evolmm.heldout_questions": 6,
                             "evolmm.scene_grid": 2, "evolmm.scene_shapes": 1,
                             "evolmm.scene_templates": ("kind_of_color",)})
    with runner.Runner(evolmm.EvoLmm, config, rt.tempdir(self)) as r:
      want = scene_questions.sample_questions(
          config.seed + 1, 6, split="heldout", size=(config.data.size,) * 2, grid=2,
          num_shapes=1, templates=("kind_of_color",))
      self.assertEqual(r.recipe.heldout, want)
      key, image = next(iter(r.recipe.source.take(1)))
      scene = scene_questions.make_scene(
          np.random.default_rng([config.seed, 0, int(key.split("-")[1])]),
          (config.data.size,) * 2, 1, grid=2)
      np.testing.assert_array_equal(np.asarray(image),
                                    np.asarray(scene_questions.draw_scene(scene)))

  def test_answer_variety_is_low_when_answers_ignore_the_image(self):
    q = lambda text, answer: types.SimpleNamespace(question=text, answer=answer)  # noqa: E731
    questions = [q("colour?", "red"), q("colour?", "blue"), q("colour?", "blue"),
                 q("how many?", "3"), q("how many?", "3")]
    # "how many?" has one gold answer: it says nothing about the image.
    variety = evolmm_tasks.answer_variety
    self.assertEqual(variety(questions, {0: "red", 1: "red", 2: "red", 3: "3", 4: "4"}), [0.5])
    self.assertEqual(variety(questions, {0: "red", 1: "blue", 2: "green"}), [1.0])


class SequentialUpdateTest(absltest.TestCase):

  def test_order_rewards_and_baseline_trace(self):
    log = []
    wrap = {
        "proposer": rt.recording(
            log, lambda i, g, rng: "<question>What colour is it?</question> a colour"),
        "solver": rt.recording(log, lambda i, g, rng: f"<answer>{SOLVER_ANSWERS[g]}</answer>"),
    }
    config = short_config(**{"warmstart.enabled": False, "evolmm.iterations": 1,
                             "evolmm.update_rule": "sequential", "train.algorithm": "reinforce",
                             "evolmm.images_per_step": 1, "evolmm.proposer_group": 1,
                             "evolmm.proposer_every": 5, "train.optimizer.lr": 1e-3,
                             "evolmm.steps_per_iteration": 5,
                             "evolmm.heldout_questions": 4})
    r = runner.Runner(evolmm.EvoLmm, config, rt.tempdir(self), role_wrappers=wrap)
    r.run_schedule()

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


class ScriptedResumeTest(absltest.TestCase):

  def test_exact_resume_mid_iteration(self):
    config = short_config(**{
        "warmstart.enabled": False, "evolmm.iterations": 1, "evolmm.steps_per_iteration": 3,
        "evolmm.heldout_questions": 4, "evolmm.images_per_step": 2, "evolmm.proposer_group": 2,
        "evolmm.samples": 3, "log.tensorboard": False})
    recs = rt.check_resume(self, evolmm.EvoLmm, config, rt.evolmm_roles(), "evolve", 2, (
        "evolmm/consistency", "evolmm/solver/reward/mean", "evolmm/solver/train/loss",
        "evolmm/proposer/train/loss", "eval/heldout_accuracy"))
    self.assertLen([r for r in recs if "evolmm/consistency" in r], 3)


@pytest.mark.slow
class ShortRunTest(absltest.TestCase):

  def test_tiny_run_learns_and_resumes_mid_iteration(self):
    config = short_config(**{"warmstart.steps": 60, "evolmm.iterations": 2,
                             "evolmm.steps_per_iteration": 3, "evolmm.heldout_questions": 16,
                             "checkpoint.every": 1, "checkpoint.keep": 1000})
    root = rt.tempdir(self)
    full = os.path.join(root, "full")
    summary = runner.run_recipe(evolmm.EvoLmm, config, full)
    for key in ("init", "after_warmstart", "iter1", "iter2"):
      self.assertIn("heldout_accuracy", summary[key])
    # The warm start makes the Solver answer in its format (accuracy above chance).
    self.assertGreater(summary["after_warmstart"]["heldout_accuracy"],
                       summary["init"]["heldout_accuracy"])
    recs = rt.records(full)
    steps = [x for x in recs if "evolmm/consistency" in x]
    self.assertLen(steps, 6)
    for x in steps:
      self.assertGreater(x["evolmm/distinct_answers"], 0.0)
      self.assertIn("evolmm/solver/train/kl", x)        # against the backbone
      self.assertIn("evolmm/proposer/train/loss", x)   # every step in grpo mode
    html = open(os.path.join(full, "gallery", "iter1.html")).read()
    self.assertIn("share of each answer", html)      # a question with its answers

    # Resume in the middle of iteration 1 from the checkpoints up to its second step.
    stages = evolmm.EvoLmm.stages(config)
    first = next(i for i, s in enumerate(stages) if s.kind == "evolve")
    part = os.path.join(root, "part")
    rt.copy_checkpoints(full, part, schedule.Schedule(stages).units_done((first, 2)))
    with runner.Runner(evolmm.EvoLmm, config, part) as resumed:
      self.assertEqual(resumed.run.cursor, (first, 2))
      self.assertTrue(resumed.recipe.on_base)
      resumed.run_schedule()
    rt.assert_same_by_step(self, recs, rt.records(part), (
        "evolmm/consistency", "evolmm/solver/train/loss", "evolmm/solver/reward/mean",
        "eval/heldout_accuracy"))


if __name__ == "__main__":
  absltest.main()
