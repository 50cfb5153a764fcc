"""Exact resume of the real GRPO train step: SIGKILL, restart, same metrics.

The child (this file run with --workdir) trains the tiny VLM with the Learner
on an 8-device mesh (data 2 x fsdp 2 x tensor 2): AdamW, 2 micro-batches, a KL
term against a frozen reference, images in every row. Its batches depend on
the data position (recipe state in the checkpoint's `extra`) and on the
learner's RNG (`step_rng`, in the train state), so a resume that loses either,
the optimizer state or the step counter reports different metrics.
"""
import os
import sys

import resume_util

if __name__ == "__main__" and "--workdir" in sys.argv:
  # Child process: resume_util.subprocess_env already set CPU and 8 devices.
  import argparse

  import jax
  import numpy as np

  from evejax import checkpoint
  from evejax import parallel
  from evejax.models import presets
  from evejax.models import vlm
  from evejax.processing import batching
  from evejax.processing import images
  from evejax.rl import learner as learner_lib

  CONFIG = presets.tiny(vocab_size=64)
  FAST_COMPILE = {"xla_backend_optimization_level": 0}
  ROWS, LENGTH = 8, 16

  def make_batch(position: int, key) -> learner_lib.TrainBatch:
    rng = np.random.default_rng(position)
    examples = []
    for _ in range(ROWS):
      pixels = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
      patches, grid = images.preprocess_image(pixels, min_pixels=28 * 28)
      n = int(rng.integers(1, 9))
      tokens = np.array([3, 5, 4] + list(rng.integers(7, 64, 3 + n)), np.int32)
      mask = np.array([0] * 6 + [1] * n, np.int32)
      examples.append(batching.Example(tokens, [(patches, grid)], mask))
    b = batching.collate(
        examples, vision=CONFIG.vision, image_token_id=CONFIG.image_token_id,
        vision_start_id=CONFIG.vision_start_token_id, pad_id=0,
        length_buckets=(LENGTH,), patch_buckets=(4,), padding="right")
    targets, loss_mask = learner_lib.targets_from_tokens(b.inputs.tokens, b.loss_mask)
    advs = np.asarray(jax.random.normal(key, (ROWS,)), np.float32)
    return learner_lib.TrainBatch(inputs=b.inputs, targets=targets, loss_mask=loss_mask,
                                  advantages=advs)

  def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir")
    p.add_argument("--steps", type=int)
    # Block until each checkpoint commits, so a kill right after a reported
    # step always finds the last periodic save (kills mid-save are
    # checkpoint_test's business).
    p.add_argument("--wait_saves", action="store_true")
    args = p.parse_args()
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = jax.jit(vlm.init_params, static_argnums=0, compiler_options=FAST_COMPILE)(
        CONFIG, jax.random.PRNGKey(0))
    cfg = learner_lib.default_train_config()
    cfg.optimizer.lr = 1e-2
    cfg.loss.kl_coef = 0.05
    cfg.micro_batches = 2
    # The reference policy is the initial model, rebuilt from its seed.
    learner = learner_lib.Learner(CONFIG, cfg, params, mesh=mesh, seed=7,
                                  compiler_options=FAST_COMPILE)
    ckpt = checkpoint.Checkpointer(os.path.join(args.workdir, "ckpt"), save_every=2,
                                   keep=2)
    extra = {"data_position": 0, "queue": ["seed"]}
    restored = ckpt.restore_latest(learner.abstract_state())
    if restored is not None:
      step, state, extra = restored
      learner.load_state(state)
      resume_util.emit_resumed(step)
    while learner.step_count < args.steps:
      batch = make_batch(extra["data_position"], learner.step_rng())
      m = learner.step("grpo", batch)
      extra["data_position"] += ROWS
      extra["queue"].append(f"program-{learner.step_count}")
      resume_util.emit_metrics(learner.step_count, {
          k: m[k] for k in ("loss", "kl", "grad_norm", "entropy", "lr")} | {
              "param_sum": float(sum(np.asarray(x, np.float64).sum()
                                     for x in jax.tree.leaves(learner.params))),
              "data_position": extra["data_position"], "queue": len(extra["queue"])})
      if ckpt.maybe_save(learner.step_count, learner.state, extra) and args.wait_saves:
        ckpt.wait()
    ckpt.maybe_save(learner.step_count, learner.state, extra, force=True)
    ckpt.close()

  main()
  sys.exit(0)

import concurrent.futures
import glob
import shutil
import tempfile

from absl.testing import absltest
import pytest


# checkpoint_test.py's fast tests kill and resume a run, and fall back from a damaged
# checkpoint; this one does both through a real train step.
@pytest.mark.slow
class ResumeRealTrainStepTest(absltest.TestCase):

  def test_sigkill_damaged_latest_checkpoint_then_resume_matches(self):
    """Kill after step 5, damage the newest checkpoint (4), restart.

    The restart warns, falls back to step 2, and from there reports exactly
    the uninterrupted run's metrics for steps 3..6.
    """
    tmp = tempfile.mkdtemp(prefix="evejax_resume_")
    self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
    steps = 6
    ref_dir, run_dir = os.path.join(tmp, "ref"), os.path.join(tmp, "run")
    argv = lambda d: [os.path.abspath(__file__), "--workdir", d, "--steps", str(steps),
                      "--wait_saves"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      ref_future = pool.submit(resume_util.run, argv(ref_dir), timeout_s=300)
      killed = resume_util.run(argv(run_dir), kill_after_step=5, timeout_s=300)
      self.assertEqual(killed.returncode, -9)
      self.assertNotIn(steps, killed.metrics)
      self.assertTrue(os.path.isdir(os.path.join(run_dir, "ckpt", "4")))
      for f in glob.glob(os.path.join(run_dir, "ckpt", "4", "state", "**", "*"),
                         recursive=True):
        if os.path.isfile(f):
          open(f, "wb").close()  # truncated, as by a crash mid-write
      resumed = resume_util.run(argv(run_dir), timeout_s=300)
      reference = ref_future.result()

    self.assertEqual(sorted(reference.metrics), list(range(1, steps + 1)))
    self.assertIsNone(reference.resumed_step)
    self.assertIn("falling back", resumed.stderr)
    self.assertEqual(resumed.resumed_step, 2)
    self.assertEqual(sorted(resumed.metrics), list(range(3, steps + 1)))
    for step, m in {**killed.metrics, **resumed.metrics}.items():
      self.assertEqual(m, reference.metrics[step], f"step {step}")
    # Every step differs from the others, so equality is not vacuous.
    self.assertLen({m["loss"] for m in reference.metrics.values()}, steps)
    self.assertEqual(resumed.metrics[steps]["data_position"], 8 * steps)
    self.assertEqual(resumed.metrics[steps]["queue"], 1 + steps)


if __name__ == "__main__":
  absltest.main()
