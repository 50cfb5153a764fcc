"""The recipe core on a toy two-role recipe: resume mid-stage, frozen copies,
shared weights, counted drops, the estimator chosen by config.

The toy method: a "writer" and a "reader" role answer one-line prompts about a
tiny image; a reply's reward is how many of its tokens are the letter token
that the prompt names, so GRPO has a signal. Stage 1 trains the writer, stage
2 the reader, which in one config shares the writer's weights and is frozen
at the start of stage 1.
"""
import json
import os
import shutil
import tempfile
from unittest import mock

import ml_collections
import numpy as np
from absl.testing import absltest

from evejax import config_utils as cu
from evejax.data import sources
from evejax import loading
from evejax.recipes import runner
from evejax.recipes import schedule
from evejax.recipes.schedule import Stage

import recipe_testing as rt

LETTERS = ("A", "B", "C")


def toy_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.recipe = "toy"
  c.seed = 3
  c.model = cu.model("tiny")
  c.init = cu.init()
  c.mesh = cu.mesh()
  c.mesh.devices = 1
  c.data = ml_collections.ConfigDict(dict(min_pixels=28 * 28, max_pixels=28 * 28))
  c.processing = ml_collections.ConfigDict(dict(
      length_buckets=(64,), patch_buckets=(4,), batch_buckets=(4,)))
  block = dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=4)
  c.sampling = ml_collections.ConfigDict(dict(writer=block, reader=dict(block, temperature=0.7)))
  c.train = cu.grpo(lr=1e-3, kl_coef=0.01)
  c.checkpoint = cu.checkpoint(every=1, keep=100)
  c.checkpoint.async_save = False
  c.log = ml_collections.ConfigDict(dict(tensorboard=False, gallery_tasks=4, progress=False))
  c.toy = ml_collections.ConfigDict(dict(share=False, steps=3, prompts=3, group=2, warm=0))
  for k, v in overrides.items():
    cu.set_value(c, k, v)
  return c


class Toy(runner.Recipe):
  """Two roles, one stage each; the reader may share the writer's weights."""

  @classmethod
  def role_specs(cls, config):
    return [runner.RoleSpec("writer"),
            runner.RoleSpec("reader", share_policy_with="writer" if config.toy.share else None)]

  def __init__(self, run):
    super().__init__(run)
    self.image = sources.render_scene(np.random.default_rng(0), (28, 28))
    self.prompts_seen = 0     # host state the recipe registers
    self.optimizers_seen = set()

  @classmethod
  def stages(cls, config):
    c = config.toy
    warm = [Stage("copy", "writer", 0, c.warm, optimizer="sft")] if c.warm else []
    return warm + [Stage("learn", "writer", 1, c.steps, frozen=("reader",)),
                   Stage("learn", "reader", 1, c.steps)]

  def sft_optimizer(self, policy):
    return {"lr": 1e-2}

  def copy_step(self, stage, step):
    """A warm start: the writer learns to say the letters it is asked for."""
    run = self.run
    self.optimizers_seen.add(run.policies["writer"].optimizer_kind)
    prompts = [run.prompt(f"Say {x} {x} {x}.", [self.image]) for x in LETTERS]
    run.log(run.roles["writer"].sft(prompts, [run.completion(f"{x} {x}") for x in LETTERS]),
            prefix="copy")

  def state(self):
    return {"prompts_seen": self.prompts_seen}

  def load_state(self, state):
    self.prompts_seen = state["prompts_seen"]

  def learn_step(self, stage, step):
    c, run = self.config.toy, self.run
    rng = np.random.default_rng(run.seed(stage.name, step))
    letters = [LETTERS[i] for i in rng.integers(len(LETTERS), size=c.prompts)]
    prompts = [run.prompt(f"Say {x} {x} {x}.", [self.image]) for x in letters]
    prompts.append(run.prompt("too long " * 200, [self.image]))   # dropped, counted
    role = self.run.roles[stage.role]
    samples = role.generate(prompts, c.group, run.seed(stage.name, step, "sample"))
    want = [run.tokenizer.encode(x)[0] for x in letters]
    rewards = [float(np.mean(t == want[samples.prompt_of(r)]))
               for r, t in enumerate(samples.tokens)]
    metrics = role.update(samples, rewards)
    self.prompts_seen += len(prompts)
    metrics.update(reward_mean=float(np.mean(rewards)), prompts_seen=self.prompts_seen)
    if stage.role == "writer":
      frozen = run.frozen["reader"].weights["vision"]["patch_embed"]["kernel"]
      metrics["frozen_reader_sum"] = float(np.asarray(frozen, np.float64).sum())
    run.log(metrics, prefix=stage.role)

  def summary(self):
    return {"prompts_seen": self.prompts_seen}


_records, _by_step = rt.records, rt.by_step


class RunnerTest(absltest.TestCase):

  def test_resume_mid_stage_with_shared_weights_and_a_frozen_copy(self):
    root = tempfile.mkdtemp()
    full = os.path.join(root, "full")
    config = toy_config(**{"toy.share": True})
    r = runner.Runner(Toy, config, full)
    self.assertIs(r.run.roles["writer"].policy, r.run.roles["reader"].policy)
    self.assertLen(r.run.policies, 1)
    summary = r.run_schedule()
    recs = _records(full)
    # Shared weights: the frozen copy does not move while the writer trains it.
    frozen = _by_step(recs, "writer/frozen_reader_sum")
    self.assertLen(set(frozen.values()), 1)
    self.assertEqual(summary["prompts_seen"], 2 * 3 * 4)
    self.assertEqual(summary["counts"]["writer/dropped_prompt_too_long"], 3)
    self.assertEqual(summary["counts"]["reader/dropped_prompt_too_long"], 3)
    self.assertTrue(os.path.exists(os.path.join(full, "config.json")))
    with open(os.path.join(full, "roles.json")) as f:   # what the evaluator reads
      self.assertEqual(json.load(f), {"writer": "writer", "reader": "writer"})

    # A run killed after the whole schedule had been logged but whose
    # checkpoints after the writer's second step are lost.
    part = os.path.join(root, "part")
    rt.copy_checkpoints(full, part, 2)
    shutil.copy(os.path.join(full, "metrics.jsonl"), part)
    resumed = runner.Runner(Toy, config, part)
    self.assertEqual(resumed.run.cursor, (0, 2))
    self.assertTrue(resumed.run.frozen["reader"].snapshot.copied)   # restored, not re-frozen
    self.assertEqual(resumed.recipe.prompts_seen, 2 * 4)
    resumed.run_schedule()
    after = _records(part)
    self.assertNotIn("reader", resumed.run.frozen)   # dropped at its stage's end
    for key in ("writer/train/loss", "writer/reward/mean", "writer/frozen_reader_sum",
                "reader/train/loss", "reader/train/kl", "reader/prompts_seen"):
      a, b = _by_step(recs, key), _by_step(after, key)
      self.assertEqual(sorted(a), sorted(b), key)
      np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)],
                                 rtol=1e-6, err_msg=key)
    # Each record once: the resumed run dropped what the killed one wrote after
    # its checkpoint, and wrote it again.
    for prefix in ("writer/train/loss", "reader/train/loss"):
      steps = [r["step"] for r in after if prefix in r]
      self.assertEqual(steps, sorted(set(steps)), prefix)
      self.assertLen(steps, 3)

  def test_separate_roles_the_estimator_and_temperatures(self):
    config = toy_config(**{"toy.steps": 1, "train.loss.advantage": "dr_grpo"})
    r = runner.Runner(Toy, config, tempfile.mkdtemp())
    writer, reader = r.run.roles["writer"], r.run.roles["reader"]
    self.assertIsNot(writer.policy, reader.policy)
    # A view, not a copy, when no other role trains the frozen role's weights.
    frozen = r.run.freeze("reader")
    self.assertFalse(frozen.snapshot.copied)
    self.assertIs(frozen.weights, reader.weights)
    r.run_schedule()
    recs = _records(r.workdir)
    # Dr.GRPO: advantages are r - mean, so their std is the rewards' within groups.
    adv = [x for x in recs if "writer/adv/group_std_mean" in x]
    self.assertNotEmpty(adv)
    self.assertNotEmpty(_by_step(recs, "writer/sampling/occupancy"))
    # The reader samples at T=0.7 and is scored at it: the ratio starts at 1.
    kl = _by_step(recs, "reader/train/sampler_approx_kl")
    self.assertLess(abs(list(kl.values())[0]), 1e-4)
    with self.assertRaisesRegex(RuntimeError, "trained since it was frozen"):
      frozen.weights  # the reader trained in stage 2
    with self.assertRaisesRegex(RuntimeError, "frozen reader does not train"):
      frozen.update(None, [])

  def test_slot_decoding_hands_rows_over_and_samples_the_static_rows(self):
    config = toy_config(**{"toy.steps": 1})
    config.decoding = cu.decoding("slots")
    config.decoding.refill_every = 1
    with runner.Runner(Toy, config, tempfile.mkdtemp()) as r:
      writer, run = r.run.roles["writer"], r.run
      self.assertEqual(run.sampler.decode_mode, "slots")
      image = np.zeros((28, 28, 3), np.uint8)
      prompts = {10 + i: run.prompt(f"Say {x}.", [image])
                 for i, x in enumerate(LETTERS * 2)}   # 6 prompts through 4 x 2 slots
      rows = {}
      slots = writer.generate(prompts, 2, seed=5, chunks=3,
                              on_row=lambda r, key, text, toks: rows.setdefault(r, (key, text)))
      self.assertEqual(sorted(rows), list(range(len(slots))))
      for r, (key, text) in rows.items():
        self.assertEqual((key, text), (slots.prompt_of(r), slots.texts[r]))
      run.sampler.decode_mode = "static"
      static = writer.generate(prompts, 2, seed=5)
      self.assertEqual(slots.texts, static.texts)

  def test_scripted_role_reports_the_policys_log_probs(self):
    config = toy_config(**{"toy.steps": 1})
    with runner.Runner(Toy, config, tempfile.mkdtemp()) as r:
      writer = r.run.roles["writer"]
      scripted = writer.scripted(lambda i, g, rng: "A A")
      prompt = r.run.prompt("Say A A A.", [np.zeros((28, 28, 3), np.uint8)])
      samples = scripted.generate([prompt], 2, seed=0)
      self.assertEqual(samples.texts, ["A A", "A A"])
      np.testing.assert_allclose(samples.logprobs[0],
                                 writer.score([prompt], samples.tokens[:1])[0], rtol=1e-6)
      self.assertTrue(np.all(samples.logprobs[0] < 0))
      # Its frozen copy replies from the same script.
      self.assertEqual(scripted.frozen(copy_params=True).generate([prompt], 1, seed=0).texts,
                       ["A A"])

  def test_a_warm_start_stage_switches_optimizers_then_starts_rl(self):
    config = toy_config(**{"toy.steps": 1, "toy.warm": 2})
    with runner.Runner(Toy, config, tempfile.mkdtemp()) as r:
      writer = r.run.policies["writer"]
      before = np.asarray(writer.learner.reference_params["text"]["embed"]["embedding"])
      r.run_schedule()
      self.assertEqual(r.recipe.optimizers_seen, {"sft"})
      self.assertEqual(writer.optimizer_kind, "rl")
      # The KL reference is the warm-started weights, not the initial ones.
      reference = writer.learner.reference_params["text"]["embed"]["embedding"]
      self.assertFalse(np.allclose(np.asarray(reference), before))
      self.assertEqual(r.run.policies["reader"].optimizer_kind, "rl")   # never warm-started
    recs = _records(r.workdir)
    self.assertLen([x for x in recs if "copy/loss" in x], 2)

  def test_another_checkpoint_format_is_one_clear_error(self):
    workdir = tempfile.mkdtemp()
    config = toy_config(**{"toy.steps": 1})
    runner.Runner(Toy, config, workdir).run_schedule()
    with mock.patch.object(runner, "CHECKPOINT_FORMAT", "recipe-core-999"):
      with self.assertRaisesRegex(loading.SetupError, "another evejax checkpoint format"):
        runner.Runner(Toy, config, workdir)


class ValidationTest(absltest.TestCase):

  def test_in_loop_validation_scores_the_role_on_its_interval(self):
    import eval_runner_test  # pylint: disable=g-import-not-at-top
    from evejax.eval import validation  # pylint: disable=g-import-not-at-top
    data = tempfile.mkdtemp()
    eval_runner_test.write_mmstar(os.path.join(data, "MMStar.tsv"))
    config = toy_config(**{"toy.steps": 2, "processing.length_buckets": (64, 256)})
    config.validation = validation.config_block(
        benchmark="mmstar", num_items=4, every=3, data_dir=data, max_new_tokens=4,
        role="reader")
    config.validation.update(min_pixels=28 * 28, max_pixels=28 * 28)
    r = runner.Runner(Toy, config, tempfile.mkdtemp())
    r.run_schedule()
    scores = _by_step(_records(r.workdir), "val/mmstar/score")
    self.assertEqual(sorted(scores), [3])   # 4 train steps: due after the third
    self.assertBetween(scores[3], 0.0, 100.0)


class ScheduleTest(absltest.TestCase):

  def test_iterated_schedules_and_where_evaluations_are_recorded(self):
    stages = schedule.iterated([Stage("warmstart", "x", 0, 2, optimizer="sft")], 2,
                               lambda it: [Stage("a", "x", it, 1, frozen=("y",))])
    self.assertEqual([st.name for st in stages], [
        "eval/iter0", "warmstart/x/iter0", "eval/iter0", "a/x/iter1", "eval/iter1",
        "a/x/iter2", "eval/iter2"])
    s = schedule.Schedule(stages)
    self.assertEqual(s.last_warmstart, 1)
    self.assertEqual([s.eval_key(i) for i in (0, 2, 4, 6)],
                     ["init", "after_warmstart", "iter1", "iter2"])
    self.assertIsNone(schedule.Schedule(schedule.iterated([], 1, lambda it: [])).last_warmstart)

  def test_counters_derive_from_the_cursor(self):
    s = schedule.Schedule([Stage("eval", trains=False), Stage("a", "x", 1, 3),
                         Stage("eval", trains=False), Stage("b", "y", 1, 2)])
    self.assertEqual([s.train_steps_done((i, k)) for i, k in
                      ((0, 0), (1, 0), (1, 2), (2, 0), (3, 0), (3, 1), (4, 0))],
                     [0, 0, 2, 3, 3, 4, 5])
    self.assertEqual([s.units_done((i, k)) for i, k in ((0, 1), (1, 0), (1, 3), (2, 0))],
                     [1, 2, 5, 6])
    self.assertEqual(Stage("learn", "writer", 2, 5).name, "learn/writer/iter2")
    self.assertEqual(runner.stable_seed(1, "a"), runner.stable_seed(1, "a"))
    self.assertNotEqual(runner.stable_seed(1, "a"), runner.stable_seed(2, "a"))


  def test_a_recipe_that_does_not_share_its_work_is_refused_on_several_processes(self):
    from evejax import distributed  # pylint: disable=g-import-not-at-top
    with mock.patch.object(distributed, "is_multiprocess", return_value=True), \
         mock.patch.object(distributed, "process_count", return_value=2):
      with self.assertRaisesRegex(loading.SetupError, "Toy runs on one process"):
        runner.Runner(Toy, toy_config(), tempfile.mkdtemp())


if __name__ == "__main__":
  absltest.main()
