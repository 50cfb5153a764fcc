"""Learner: scoring path, exact accumulation, sharding, freezing, skips, losses."""

import functools

from absl.testing import absltest
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from evejax import parallel
from evejax.models import presets
from evejax.models import vlm
from evejax.processing import batching
from evejax.processing import images
from evejax.rl import learner as learner_lib
from evejax.rl import losses
from evejax.rl import optim
from evejax.rl import synthetic

CONFIG = presets.tiny(vocab_size=64)
B, T = 8, 16
# LLVM optimisation off: these tiny programs compile ~5x faster and still run
# fast. Per program, so nothing else in the test process is affected.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


@functools.lru_cache(maxsize=None)
def _init_params(seed: int = 0):
  return _jit(vlm.init_params, static_argnums=0)(CONFIG, jax.random.PRNGKey(seed))


@functools.partial(_jit, static_argnums=(3,))
def _forward_logp(params, inputs, targets, temperature=1.0):
  """The reference: full [B, T, V] logits from vlm.forward, log-softmax, gather."""
  logits = vlm.forward(params, CONFIG, inputs) / temperature
  return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]


def _batch(seed: int = 0, rows: int = B, image: bool = True) -> learner_lib.TrainBatch:
  """Rows = [vision_start, image, vision_end, prompt text] + a ragged completion."""
  rng = np.random.default_rng(seed)
  examples = []
  for _ in range(rows):
    pixels = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    patches, grid = images.preprocess_image(pixels, min_pixels=28 * 28)
    prompt = ([3, 5, 4] if image else []) + list(rng.integers(7, 64, 3))
    completion = list(rng.integers(7, 64, rng.integers(1, T - len(prompt) + 1)))
    tokens = np.array(prompt + completion, np.int32)
    mask = np.array([0] * len(prompt) + [1] * len(completion), np.int32)
    examples.append(batching.Example(tokens, [(patches, grid)] if image else [], mask))
  b = batching.collate(examples, vision=CONFIG.vision, image_token_id=CONFIG.image_token_id,
                       vision_start_id=CONFIG.vision_start_token_id, pad_id=0,
                       length_buckets=(T,), patch_buckets=(4 if image else 0,),
                       padding="right")
  targets, loss_mask = learner_lib.targets_from_tokens(b.inputs.tokens, b.loss_mask)
  return learner_lib.TrainBatch(inputs=b.inputs, targets=targets, loss_mask=loss_mask)


def _cfg(**kw) -> ml_collections.ConfigDict:
  cfg = learner_lib.default_train_config()
  cfg.optimizer.lr = 1e-2
  cfg.loss.kl_coef = 0.1
  for k, v in kw.items():
    node = cfg
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return cfg


def _assert_trees_close(test, a, b, atol, rtol=0.0):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                               atol=atol, rtol=rtol, err_msg=jax.tree_util.keystr(path))


class TokenLogprobsTest(absltest.TestCase):

  def test_chunked_equals_full_logits_values_and_grads(self):
    # Text only: chunking is about the unembedding; the vision tower would
    # only add compile time here.
    params, batch = _init_params(), _batch(image=False)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, T)), jnp.float32)

    @functools.partial(_jit, static_argnums=2)
    def value_and_grad(params, batch, chunk):
      def f(p):
        logp, ent = learner_lib.token_logprobs(p, CONFIG, batch.inputs, batch.targets,
                                               chunk, temperature=0.7, with_entropy=True)
        return (logp * weights).sum(), (logp, ent)
      return jax.value_and_grad(f, has_aux=True)(params)

    (_, (logp_full, ent_full)), g_full = value_and_grad(params, batch, 0)
    (_, (logp_chunk, ent_chunk)), g_chunk = value_and_grad(params, batch, 5)  # 16 = 5+5+5+1
    want = _forward_logp(params, batch.inputs, batch.targets, 0.7)
    np.testing.assert_allclose(logp_full, want, atol=2e-5)
    np.testing.assert_allclose(logp_chunk, want, atol=2e-5)
    np.testing.assert_allclose(ent_chunk, ent_full, atol=2e-5)
    self.assertTrue(np.all(np.asarray(ent_full) > 0))
    # Gradients reach ~30: allow fp32 rounding of the summation order (AVX-512
    # CPUs differ from AVX2 ones by ~1.5e-5 there).
    _assert_trees_close(self, g_chunk, g_full, atol=1e-5, rtol=2e-6)

  def test_targets_from_tokens_shifts_left(self):
    tokens = np.array([[5, 6, 7, 8, 0]])
    comp = np.array([[0, 0, 1, 1, 0]])
    targets, mask = learner_lib.targets_from_tokens(tokens, comp)
    np.testing.assert_array_equal(targets, [[6, 7, 8, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 0, 0]])


class GrpoStepTest(absltest.TestCase):
  """One GRPO step: k micro-batches == one batch == 8-device mesh == direct loss."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    params = _init_params()
    batch = _batch()
    rng = np.random.default_rng(2)
    logp = np.asarray(_forward_logp(params, batch.inputs, batch.targets))
    # Old/ref log-probs away from the current ones, so the clip, the dual clip
    # and the KL term are all active.
    batch = batch.replace(
        old_logp=(logp + rng.normal(scale=1.0, size=logp.shape)).astype(np.float32),
        ref_logp=(logp + rng.normal(scale=0.3, size=logp.shape)).astype(np.float32),
        advantages=rng.normal(size=B).astype(np.float32))
    cls.params, cls.batch, cls.logp = params, batch, logp
    cls.results = {}

  def run_step(self, name, micro_batches=1, mesh=None):
    if name not in self.results:
      # Plain SGD with lr 1: the param change is the gradient itself, which
      # compares well; Adam's first step is ~sign(grad) and amplifies noise.
      cfg = _cfg(micro_batches=micro_batches, **{"optimizer.name": "sgd",
                                                 "optimizer.lr": 1.0,
                                                 "optimizer.grad_clip": 0.0})
      learner = learner_lib.Learner(CONFIG, cfg, self.params, mesh=mesh,
                                    compiler_options=FAST_COMPILE)
      metrics = learner.step("grpo", self.batch)
      self.results[name] = (metrics, jax.device_get(learner.params), learner)
    return self.results[name]

  def test_loss_equals_direct_computation(self):
    metrics, _, _ = self.run_step("one")
    b = self.batch
    pg, pm = losses.policy_loss(self.logp, b.old_logp, b.advantages, b.loss_mask)
    kl = losses.aggregate(losses.kl_penalty(self.logp, b.ref_logp, "low_var_kl"), b.loss_mask)
    np.testing.assert_allclose(metrics["pg_loss"], pg, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-4)
    np.testing.assert_allclose(metrics["loss"], pg + 0.1 * kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], pm["clip_fraction"], atol=1e-6)
    self.assertGreater(metrics["clip_fraction"], 0.0)
    self.assertGreater(metrics["dual_clip_fraction"], 0.0)
    self.assertEqual(metrics["skipped"], 0.0)
    self.assertEqual(metrics["token_count"], float(b.loss_mask.sum()))

  def test_params_moved(self):
    _, after, _ = self.run_step("one")
    moved = [not np.allclose(x, y) for x, y in zip(jax.tree.leaves(after),
                                                  jax.tree.leaves(self.params))]
    self.assertTrue(all(moved), "every param (vision tower included) gets an update")

  def test_sharded_micro_batched_step_equals_one_device_one_batch(self):
    # 8 devices (data 2 x fsdp 2 x tensor 2), 2 micro-batches of 4 rows, each
    # spread over the 4 data-parallel devices: same loss, metrics and update
    # as the whole batch on one device (not a mean of micro-batch means: the
    # completions are ragged, so token-mean would differ).
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    m1, p1, _ = self.run_step("one")
    ms, ps, learner = self.run_step("mesh", micro_batches=2, mesh=mesh)
    for k in ("loss", "pg_loss", "kl", "clip_fraction", "entropy", "grad_norm"):
      np.testing.assert_allclose(ms[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    _assert_trees_close(self, ps, p1, atol=1e-5)
    # The params really are spread over the mesh, and so are Adam's moments.
    emb = learner.params["text"]["embed"]["embedding"]
    self.assertLess(emb.addressable_shards[0].data.size, emb.size)
    adam = learner_lib.Learner(CONFIG, _cfg(), self.params, mesh=mesh,
                               compiler_options=FAST_COMPILE)
    mu = adam.state.opt_state[1][0].mu["text"]["embed"]["embedding"]
    self.assertEqual(mu.sharding, adam.params["text"]["embed"]["embedding"].sharding)
    self.assertLess(mu.addressable_shards[0].data.size, mu.size)

  def test_batch_not_divisible_is_a_clear_error(self):
    _, _, learner = self.run_step("mesh", micro_batches=2, mesh=parallel.make_mesh(
        {"data": 2, "fsdp": 2, "tensor": 2}))
    with self.assertRaisesRegex(ValueError, r"multiple of micro_batches \(2\) x devices"):
      learner.step("grpo", _batch(rows=6).replace(advantages=np.zeros(6, np.float32)))


class FreezeAndSkipTest(absltest.TestCase):

  def test_frozen_vision_nan_skips_and_stop(self):
    params = _init_params()
    cfg = _cfg(freeze=("^vision/",), max_nonfinite_in_a_row=2)
    cfg.loss.kl_coef = 0.0
    learner = learner_lib.Learner(CONFIG, cfg, params, param_dtype="bfloat16",
                                  compiler_options=FAST_COMPILE)
    self.assertIsNone(learner.reference_params)  # kl_coef 0: no reference, no ref pass
    batch = _batch().replace(advantages=np.linspace(-1, 1, B).astype(np.float32))
    before = jax.device_get(learner.params)
    dtypes = jax.tree.map(lambda x: x.dtype, learner.state)
    metrics = learner.step("grpo", batch)
    self.assertNotIn("kl", metrics)
    # bf16 params keep bf16 Adam moments: the state's dtypes never drift
    # (which would recompile the step and break checkpoint restores).
    self.assertEqual(jax.tree.map(lambda x: x.dtype, learner.state), dtypes)
    after = jax.device_get(learner.params)
    self.assertEqual(after["text"]["norm"]["scale"].dtype, jnp.bfloat16)
    _assert_trees_close(self, after["vision"], before["vision"], atol=0)
    self.assertFalse(np.array_equal(after["text"]["embed"]["embedding"],
                                    before["text"]["embed"]["embedding"]))
    # Frozen params carry no optimizer state: Adam's moments cover text only.
    mu = learner.state.opt_state[1][0].mu
    self.assertEmpty(jax.tree.leaves(mu["vision"]))
    self.assertLen(jax.tree.leaves(mu["text"]), len(jax.tree.leaves(params["text"])))

    bad = batch.replace(advantages=np.full(B, np.nan, np.float32))
    metrics = learner.step("grpo", bad)
    self.assertEqual(metrics["skipped"], 1.0)
    self.assertEqual(metrics["nonfinite_in_a_row"], 1.0)
    _assert_trees_close(self, jax.device_get(learner.params), after, atol=0)
    learner.step("grpo", batch)  # a good step resets the run of failures
    learner.step("grpo", bad)
    with self.assertRaisesRegex(FloatingPointError, "max_nonfinite_in_a_row=2"):
      learner.step("grpo", bad)
    self.assertEqual(learner.step_count, 5)
    self.assertEqual(int(learner.state.nonfinite_total), 3)

  def test_abstract_learner_compiles_without_allocating(self):
    shapes = jax.eval_shape(lambda: vlm.init_params(CONFIG, jax.random.PRNGKey(0)))
    mesh = parallel.make_mesh({"fsdp": 4}, devices=jax.devices()[:4])
    learner = learner_lib.Learner(CONFIG, _cfg(), shapes, mesh=mesh,
                                  compiler_options=FAST_COMPILE)
    self.assertTrue(learner.abstract)
    self.assertIsInstance(learner.params["text"]["norm"]["scale"], jax.ShapeDtypeStruct)
    batch = synthetic.abstract_batch(CONFIG, rows=4, length=T, images=1, image_side=28)
    stats = learner.lower_step("grpo", batch).compile().memory_analysis()
    self.assertGreater(stats.temp_size_in_bytes, 0)
    # The train state is an argument, sharded 4 ways.
    state_bytes = parallel.per_device_bytes(learner.abstract_state())
    self.assertGreaterEqual(stats.argument_size_in_bytes, state_bytes)
    self.assertLess(state_bytes, 3 * 4 * sum(x.size for x in jax.tree.leaves(shapes)) / 2)
    with self.assertRaisesRegex(ValueError, "abstract params"):
      learner.step("sft", _batch())

  def test_freeze_pattern_typo(self):
    with self.assertRaisesRegex(ValueError, "matches no parameter.*vision"):
      optim.trainable_mask(_init_params(), ("^visual/",))

  def test_unknown_config_key(self):
    with self.assertRaisesRegex(ValueError, "config.train.loss.kl_cof"):
      learner_lib.merge_config({"loss": {"kl_cof": 0.1}})
    # An algorithm's own block exists only where a config names it, and is checked.
    self.assertNotIn("reinforce", learner_lib.merge_config({}))
    with self.assertRaisesRegex(ValueError, "config.train.reinforce.kl_bta"):
      learner_lib.merge_config({"reinforce": {"kl_bta": 0.1}})
    self.assertEqual(learner_lib.merge_config({"algorithm": "reinforce"}).reinforce.kl_beta,
                     1e-3)
    with self.assertRaisesRegex(ValueError, "not a registered algorithm"):
      learner_lib.merge_config({"algorithm": "ppo2"})
    # A layer layout from the command line must be a bool or None, not text.
    with self.assertRaisesRegex(ValueError, r"unroll_layers='auto' must be True, False or None"):
      learner_lib.Learner(CONFIG, _cfg(unroll_layers="auto"), _init_params())

  def test_warmup_then_cosine_schedule(self):
    cfg = _cfg()
    cfg.optimizer.update(lr=1.0, schedule="cosine", warmup_steps=4, total_steps=12)
    lr = optim.schedule(cfg)
    np.testing.assert_allclose([lr(0), lr(2), lr(4), lr(8), lr(12)],
                               [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    cfg.optimizer.total_steps = 0
    with self.assertRaisesRegex(ValueError, "total_steps"):
      optim.schedule(cfg)


class SftAndReinforceTest(absltest.TestCase):

  def test_sft_loss_is_completion_nll(self):
    params, batch = _init_params(), _batch()
    learner = learner_lib.Learner(CONFIG, _cfg(**{"loss.kl_coef": 0.0}), params,
                                  compiler_options=FAST_COMPILE)
    logp = np.asarray(_forward_logp(params, batch.inputs, batch.targets))
    m = batch.loss_mask
    first = learner.step("sft", batch)
    np.testing.assert_allclose(first["loss"], -(logp * m).sum() / m.sum(), rtol=1e-5)
    for _ in range(4):
      last = learner.step("sft", batch)
    self.assertLess(last["loss"], first["loss"] - 0.5)
    # A learner that scores its policy at a sampling temperature still fits
    # the data at T=1 (a recipe's roles sample at T != 1).
    hot = learner_lib.Learner(CONFIG, _cfg(**{"loss.kl_coef": 0.0}), params,
                              compiler_options=FAST_COMPILE)
    np.testing.assert_allclose(hot.step("sft", batch, temperature=0.5)["loss"],
                               first["loss"], rtol=1e-5)
    with self.assertRaisesRegex(ValueError, "no 'reinforce' step"):
      hot.step("reinforce", batch)

  def test_reinforce_loss_baseline_and_beta(self):
    params, ref = _init_params(0), _init_params(1)
    cfg = _cfg(**{"algorithm": "reinforce", "loss.kl_coef": 0.0, "ref_on_host": True})
    cfg.reinforce = {"kl_beta": 0.5}
    learner = learner_lib.Learner(CONFIG, cfg, params, ref_params=ref,
                                  compiler_options=FAST_COMPILE)
    self.assertIsInstance(learner.reference_params["text"]["norm"]["scale"], np.ndarray)
    batch = _batch()
    rewards = np.linspace(0, 1, B).astype(np.float32)

    @_jit
    def direct(params, ref):
      logits = vlm.forward(params, CONFIG, batch.inputs)
      ref_logits = vlm.forward(ref, CONFIG, batch.inputs)
      logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1),
                                 batch.targets[..., None], -1)[..., 0]
      return logp, losses.token_kl_from_logits(logits, ref_logits)

    logp, kl_tok = map(np.asarray, direct(params, ref))
    m = batch.loss_mask
    nll = -(logp * m).sum(-1) / m.sum(-1)
    adv = rewards - rewards.mean()  # first batch of a role: baseline = its mean
    kl = (kl_tok * m).sum() / m.sum()
    fields, _ = learner.batch_fields(rewards, group=B)
    metrics = learner.step("reinforce", batch.replace(**fields))
    np.testing.assert_allclose(metrics["pg_loss"], (adv * nll).mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-4)
    np.testing.assert_allclose(metrics["loss"], (adv * nll).mean() + 0.5 * kl, rtol=1e-4)

    s = learner.state.algorithm_state
    np.testing.assert_allclose(s.baseline.value, rewards.mean(), rtol=1e-6)
    np.testing.assert_allclose(s.kl_beta, 0.5 * np.exp(0.1 * (kl - 0.02) / 0.02), rtol=1e-4)
    fields, _ = learner.batch_fields(rewards + 1.0, group=B)
    metrics = learner.step("reinforce", batch.replace(**fields))
    np.testing.assert_allclose(metrics["baseline"], rewards.mean(), rtol=1e-5)
    np.testing.assert_allclose(learner.state.algorithm_state.baseline.value,
                               0.9 * rewards.mean() + 0.1 * (rewards.mean() + 1.0), rtol=1e-5)
    with self.assertRaisesRegex(ValueError, "no 'grpo' step"):
      learner.step("grpo", batch.replace(**fields))

  def test_advantage_estimator_from_config(self):
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0], np.float32)
    grpo = learner_lib.Learner(CONFIG, _cfg(), _init_params(), compiler_options=FAST_COMPILE)
    dr = learner_lib.Learner(CONFIG, _cfg(**{"loss.advantage": "dr_grpo"}), _init_params(),
                             compiler_options=FAST_COMPILE)
    g = grpo.batch_fields(rewards, 4)[0]["advantages"]
    d, stats = dr.batch_fields(rewards, 4)
    np.testing.assert_allclose(d["advantages"], [0.75, -0.25, -0.25, -0.25, 1, 1, -1, -1])
    np.testing.assert_allclose(g[:4], np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6),
                               rtol=1e-5)
    self.assertIn("adv/zero_variance_groups", stats)


if __name__ == "__main__":
  absltest.main()
