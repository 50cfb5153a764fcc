"""Tests for evejax.checkpoint: sharded round trip, keep-K, fallback, exact resume."""
import os

import glob
import sys
import textwrap

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from evejax import checkpoint
from evejax import observe
from evejax import parallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_testing as rt
import resume_util


def _state(mesh, seed=0):
  rng = np.random.default_rng(seed)
  fsdp = NamedSharding(mesh, P("fsdp"))
  rep = NamedSharding(mesh, P())
  return {
      "params": {
          "w": jax.device_put(jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
                              NamedSharding(mesh, P("fsdp", "tensor"))),
          "b": jax.device_put(jnp.asarray(rng.normal(size=(6,)), jnp.bfloat16), rep),
      },
      "opt": {"mu": jax.device_put(jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
                                   fsdp)},
      "step": jnp.asarray(seed, jnp.int32),
      "rng": jax.random.key(seed),
      "per_shard_keys": jax.device_put(jax.random.split(jax.random.key(seed + 1), 4),
                                       NamedSharding(mesh, P("fsdp"))),
  }


def _assert_same(test, a, b):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    test.assertEqual(x.dtype, y.dtype)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class KeyHelpersTest(absltest.TestCase):

  def test_keys_round_trip_through_data(self):
    tree = {"a": jax.random.key(3), "b": jnp.ones(2), "c": [jax.random.key(4, impl="rbg")]}
    data, impls = checkpoint.keys_to_data(tree)
    self.assertEqual(data["a"].dtype, jnp.uint32)
    self.assertEqual(data["c"][0].shape, (4,))
    self.assertEqual(set(impls.values()), {"threefry2x32", "rbg"})
    back = checkpoint.data_to_keys(data, impls)
    _assert_same(self, tree, back)
    # Re-wrapped keys draw the same numbers.
    np.testing.assert_array_equal(jax.random.uniform(back["c"][0], (3,)),
                                  jax.random.uniform(tree["c"][0], (3,)))


class CheckpointerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    self.dir = rt.tempdir(self)

  def _saved(self, steps, keep=5, **kw):
    ckpt = checkpoint.Checkpointer(self.dir, save_every=1, keep=keep, **kw)
    for s in steps:
      self.assertTrue(ckpt.maybe_save(s, _state(self.mesh, s), {"pos": s}))
    ckpt.close()
    return checkpoint.Checkpointer(self.dir, save_every=1, keep=keep)

  def test_sharded_round_trip_with_keys_and_extra(self):
    state = _state(self.mesh, seed=7)
    extra = {"data_position": np.int64(123), "queue": [{"program": "def f(): pass"}],
             "phase": "solver", "history": np.arange(3)}
    with checkpoint.Checkpointer(self.dir, save_every=2, keep=3) as ckpt:
      self.assertIsNone(ckpt.restore_latest(parallel.abstract_tree(state)))
      self.assertFalse(ckpt.maybe_save(3, state, extra))   # not a multiple of 2
      self.assertTrue(ckpt.maybe_save(4, state, extra))
      extra["phase"] = "mutated after save"               # must not leak into step 4
    ckpt = checkpoint.Checkpointer(self.dir, save_every=2, keep=3)
    step, restored, rextra = ckpt.restore_latest(parallel.abstract_tree(state))
    self.assertEqual(step, 4)
    _assert_same(self, state, restored)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
      self.assertEqual(x.sharding, y.sharding)
    self.assertEqual(rextra, {"data_position": 123, "queue": [{"program": "def f(): pass"}],
                              "phase": "solver", "history": [0, 1, 2]})
    ckpt.close()

  def test_restores_onto_requested_shardings(self):
    state = _state(self.mesh, seed=1)
    ckpt = self._saved([1])
    other = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype,
            sharding=NamedSharding(other, P("tensor") if x.ndim and x.shape[0] % 8 == 0
                                   else P())), state)
    _, restored, _ = ckpt.restore_latest(target)
    _assert_same(self, state, restored)
    self.assertEqual(restored["params"]["w"].sharding.spec, P("tensor"))
    self.assertEqual(restored["params"]["w"].addressable_shards[0].data.shape, (2, 6))
    ckpt.close()

  def test_keeps_k_newest_and_force_saves(self):
    ckpt = checkpoint.Checkpointer(self.dir, save_every=3, keep=2)
    saved = [s for s in range(1, 8) if ckpt.maybe_save(s, _state(self.mesh, s), {})]
    self.assertEqual(saved, [3, 6])
    self.assertTrue(ckpt.maybe_save(7, _state(self.mesh, 7), {}, force=True))
    self.assertFalse(ckpt.maybe_save(7, _state(self.mesh, 7), {}, force=True))  # exists
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [6, 7])
    self.assertEqual(sorted(os.listdir(self.dir)), ["6", "7"])
    ckpt.close()

  def test_damaged_latest_falls_back_to_previous_with_warning(self):
    def truncate_data(step_dir):
      for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True):
        if os.path.isfile(f):
          open(f, "wb").close()

    def zero_data(step_dir):
      for f in glob.glob(os.path.join(step_dir, "state", "d", "*")):
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:
          fh.write(b"\0" * size)

    def delete_data(step_dir):
      for f in glob.glob(os.path.join(step_dir, "state", "d", "*")):
        os.remove(f)

    def drop_commit_marker(step_dir):
      os.remove(os.path.join(step_dir, "commit_success.txt"))

    def corrupt_extra(step_dir):
      with open(os.path.join(step_dir, "extra", "metadata"), "w") as f:
        f.write("{not json")

    for damage in (truncate_data, zero_data, delete_data, drop_commit_marker, corrupt_extra):
      with self.subTest(damage.__name__):
        self.dir = rt.tempdir(self)
        ckpt = self._saved([1, 2, 3])
        damage(os.path.join(self.dir, "3"))
        abstract = parallel.abstract_tree(_state(self.mesh))
        with self.assertLogs(level="WARNING") as logs:
          step, state, extra = ckpt.restore_latest(abstract)
        self.assertEqual(step, 2)
        self.assertEqual(extra, {"pos": 2})
        _assert_same(self, _state(self.mesh, 2), state)
        self.assertTrue(any("step 3" in m and "falling back" in m for m in logs.output),
                        logs.output)
        # The damaged step was moved aside, so the resumed run can save step 3 again.
        self.assertEqual(ckpt.all_steps(), [1, 2])
        self.assertTrue(ckpt.maybe_save(3, _state(self.mesh, 33), {"pos": 33}))
        ckpt.wait()
        step, state, extra = ckpt.restore_latest(abstract)
        self.assertEqual((step, extra), (3, {"pos": 33}))
        ckpt.close()

  def test_killed_save_leaves_previous_steps(self):
    ckpt = self._saved([1, 2])
    # What a save killed before its commit (rename) leaves behind.
    tmp = os.path.join(self.dir, "3.orbax-checkpoint-tmp-1700000000")
    os.makedirs(os.path.join(tmp, "state"))
    step, _, extra = ckpt.restore_latest(parallel.abstract_tree(_state(self.mesh)))
    self.assertEqual((step, extra), (2, {"pos": 2}))
    ckpt.close()

  def test_unrestorable_directory_raises_clear_error_and_moves_nothing(self):
    ckpt = self._saved([1, 2])
    wrong = {"something": jax.ShapeDtypeStruct((3,), jnp.float32)}
    with self.assertLogs(level="WARNING"):
      with self.assertRaisesRegex(checkpoint.CheckpointError,
                                  r"(?s)None of the checkpoints \[1, 2\].*new --workdir"):
        ckpt.restore_latest(wrong)
    self.assertEqual(sorted(os.listdir(self.dir)), ["1", "2"])
    ckpt.close()

  def test_extra_must_be_json(self):
    with checkpoint.Checkpointer(self.dir, save_every=1, keep=1) as ckpt:
      with self.assertRaisesRegex(ValueError, "JSON-serializable.*object"):
        ckpt.maybe_save(1, {"x": jnp.zeros(2)}, {"bad": object()})


# A deterministic toy training loop: sharded linear regression with momentum,
# a typed PRNG key in the state (noise per step) and a data cursor in `extra`.
_TOY_SCRIPT = textwrap.dedent("""
    import argparse, os, time
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from evejax import checkpoint, observe, parallel
    import resume_util

    p = argparse.ArgumentParser()
    p.add_argument("--workdir"); p.add_argument("--steps", type=int)
    p.add_argument("--sleep", type=float, default=0.0)
    args = p.parse_args()

    mesh = parallel.make_mesh({"fsdp": -1})
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    Y = (X @ rng.normal(size=(8, 4)) + 0.1 * rng.normal(size=(40, 4))).astype(np.float32)
    w_sharding = NamedSharding(mesh, P("fsdp"))
    state = {"w": jax.device_put(jnp.zeros((8, 4)), w_sharding),
             "m": jax.device_put(jnp.zeros((8, 4)), w_sharding),
             "key": jax.random.key(42), "step": jnp.int32(0)}
    # Every leaf lives on the mesh, so restored leaves (committed to the
    # shardings of the abstract state) mix with the others under jit.
    state = jax.device_put(state, {"w": w_sharding, "m": w_sharding,
                                   "key": parallel.replicated(mesh),
                                   "step": parallel.replicated(mesh)})
    extra = {"data_pos": 0, "epoch_order": rng.permutation(40).tolist()}

    ckpt = checkpoint.Checkpointer(os.path.join(args.workdir, "ckpt"), save_every=1, keep=2)
    restored = ckpt.restore_latest(parallel.abstract_tree(state))
    start = 0
    if restored is not None:
      start, state, extra = restored
      resume_util.emit_resumed(start)
    writer = observe.MetricsWriter(args.workdir, tensorboard=False,
                                   resume_step=start if restored else None)

    @jax.jit
    def train_step(state, x, y):
      key, sub = jax.random.split(state["key"])
      y = y + 0.01 * jax.random.normal(sub, y.shape)
      loss, g = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(state["w"])
      m = 0.9 * state["m"] + g
      return {"w": state["w"] - 0.05 * m, "m": m, "key": key,
              "step": state["step"] + 1}, loss

    for step in range(start, args.steps):
      pos = extra["data_pos"]
      idx = [extra["epoch_order"][(pos + i) % 40] for i in range(8)]
      state, loss = train_step(state, X[idx], Y[idx])
      extra["data_pos"] = pos + 8
      if extra["data_pos"] % 40 == 0:   # new epoch: reshuffle from the key
        order = jax.random.permutation(jax.random.fold_in(state["key"], 1), 40)
        extra["epoch_order"] = np.asarray(order).tolist()
      metrics = {"loss": float(loss), "w_sum": float(jnp.sum(state["w"]))}
      writer.scalars(step + 1, metrics)
      resume_util.emit_metrics(step + 1, metrics)
      ckpt.maybe_save(step + 1, state, extra)
      time.sleep(args.sleep)
    ckpt.close()
    writer.close()
""")


class ExactResumeTest(absltest.TestCase):

  def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(self):
    tmp = rt.tempdir(self)
    script = os.path.join(tmp, "toy_train.py")
    with open(script, "w") as f:
      f.write(_TOY_SCRIPT)
    steps = 8
    ref_dir, run_dir = os.path.join(tmp, "ref"), os.path.join(tmp, "run")
    argv = lambda d: [script, "--workdir", d, "--steps", str(steps), "--sleep", "0.05"]
    reference, killed, resumed = resume_util.kill_and_resume(
        argv(ref_dir), argv(run_dir), kill_after_step=4)

    self.assertEqual(sorted(reference.metrics), list(range(1, steps + 1)))
    self.assertIsNone(reference.resumed_step)
    self.assertEqual(killed.returncode, -9)
    self.assertNotIn(steps, killed.metrics)
    # The restart really resumed from a checkpoint of the killed run.
    self.assertIsNotNone(resumed.resumed_step)
    self.assertBetween(resumed.resumed_step, 1, max(killed.metrics))
    self.assertEqual(sorted(resumed.metrics),
                     list(range(resumed.resumed_step + 1, steps + 1)))
    for step, m in resumed.metrics.items():
      self.assertEqual(m, reference.metrics[step], f"step {step}")
    for step, m in killed.metrics.items():
      self.assertEqual(m, reference.metrics[step], f"step {step}")

    # The metrics file holds every step exactly once, with the reference values.
    records = observe.read_jsonl(os.path.join(run_dir, observe.METRICS_FILE))
    self.assertEqual([r["step"] for r in records], list(range(1, steps + 1)))
    for r in records:
      self.assertEqual(r["loss"], reference.metrics[r["step"]]["loss"])


if __name__ == "__main__":
  absltest.main()
