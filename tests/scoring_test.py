"""The step's scoring path: fused log-prob/entropy gradient, completion windows."""

import functools

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from evejax.models import presets
from evejax.models import vlm
from evejax.processing import batching
from evejax.rl import learner as learner_lib
from evejax.rl import losses

CONFIG = presets.tiny(vocab_size=64)
B, T = 4, 160   # long enough for a window (multiples of 64) shorter than T
FAST_COMPILE = {"xla_backend_optimization_level": 0}
_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def _unfused(logits, targets, temperature):
  z = logits / temperature
  logp = jnp.take_along_axis(jax.nn.log_softmax(z, -1), targets[..., None], -1)[..., 0]
  return logp, losses.token_entropy(z)


def _batch(seed=0, old_logp=False):
  """Text rows: a 20-60 token prompt, then a 10-70 token completion, right-padded."""
  rng = np.random.default_rng(seed)
  examples = []
  for _ in range(B):
    prompt, completion = rng.integers(7, 64, rng.integers(20, 61)), rng.integers(
        7, 64, rng.integers(10, 71))
    tokens = np.concatenate([prompt, completion]).astype(np.int32)
    mask = np.r_[np.zeros(len(prompt)), np.ones(len(completion))].astype(np.int32)
    examples.append(batching.Example(tokens, [], mask))
  b = batching.collate(examples, vision=CONFIG.vision, image_token_id=CONFIG.image_token_id,
                       vision_start_id=CONFIG.vision_start_token_id, pad_id=0,
                       length_buckets=(T,), patch_buckets=(0,), padding="right")
  targets, loss_mask = learner_lib.targets_from_tokens(b.inputs.tokens, b.loss_mask)
  return learner_lib.TrainBatch(
      inputs=b.inputs, targets=targets, loss_mask=loss_mask,
      old_logp=(np.where(loss_mask > 0, -rng.exponential(2.0, loss_mask.shape), 0)
                .astype(np.float32) if old_logp else None),
      advantages=rng.normal(size=B).astype(np.float32))


class FusedLogpEntropyTest(absltest.TestCase):

  def test_values_and_gradients_equal_log_softmax(self):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(scale=3.0, size=(3, 5, 37)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 37, (3, 5)), jnp.int32)
    g_logp, g_ent = (jnp.asarray(rng.normal(size=(3, 5)), jnp.float32) for _ in range(2))

    def weighted(fn):
      def f(x):
        logp, ent = fn(x, targets, 0.7)
        return (logp * g_logp + ent * g_ent).sum(), (logp, ent)
      return jax.value_and_grad(f, has_aux=True)(logits)

    (_, (logp, ent)), grad = weighted(losses.token_logp_entropy)
    (_, (want_logp, want_ent)), want_grad = weighted(_unfused)
    np.testing.assert_allclose(logp, want_logp, atol=1e-5)
    np.testing.assert_allclose(ent, want_ent, atol=1e-5)
    np.testing.assert_allclose(grad, want_grad, atol=1e-5)
    np.testing.assert_allclose(losses.token_logp(logits, targets, 0.7), want_logp, atol=1e-5)


class CompletionWindowTest(absltest.TestCase):

  def test_window_size_covers_the_longest_span(self):
    mask = np.zeros((3, 256), np.float32)
    mask[0, 10:80] = 1
    mask[1, 200:255] = 1
    self.assertEqual(learner_lib.window_size(mask), 128)   # span 70 -> 2 x 64
    mask[2, 0:250] = 1
    self.assertEqual(learner_lib.window_size(mask), 0)     # the whole length
    starts = learner_lib.completion_window(jnp.asarray(mask[:2]), 128)
    np.testing.assert_array_equal(starts, [10, 128])       # ends by T

  def test_windowed_logprobs_and_gradients_equal_full(self):
    params = _jit(vlm.init_params, static_argnums=0)(CONFIG, jax.random.PRNGKey(0))
    batch = _batch()
    window = learner_lib.window_size(batch.loss_mask)
    self.assertBetween(window, 64, T - 1)
    m = jnp.asarray(batch.loss_mask)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, T)), jnp.float32)

    @functools.partial(_jit, static_argnums=(1, 2))
    def value_and_grad(params, window, chunk):
      def f(p):
        logp, ent = learner_lib.token_logprobs(
            p, CONFIG, batch.inputs, batch.targets, chunk, temperature=0.7,
            with_entropy=True, loss_mask=m, window=window)
        return (m * weights * (logp + 0.1 * ent)).sum(), (logp, ent)
      return jax.value_and_grad(f, has_aux=True)(params)

    (_, (logp, ent)), grads = value_and_grad(params, 0, 0)
    on = np.asarray(m) > 0
    for chunk in (0, 48):
      (_, (w_logp, w_ent)), w_grads = value_and_grad(params, window, chunk)
      np.testing.assert_allclose(np.asarray(w_logp)[on], np.asarray(logp)[on], atol=2e-5)
      np.testing.assert_allclose(np.asarray(w_ent)[on], np.asarray(ent)[on], atol=2e-5)
      for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(w_grads),
                              jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))

  def test_windowed_unrolled_step_equals_full_scanned_step(self):
    params = _jit(vlm.init_params, static_argnums=0)(CONFIG, jax.random.PRNGKey(0))
    batch = _batch(old_logp=True)
    out = {}
    for fast in (True, False):
      cfg = learner_lib.default_train_config()
      cfg.update_from_flattened_dict({
          "completion_window": fast, "unroll_layers": fast, "loss.kl_coef": 0.1,
          "loss.entropy_coef": 0.01, "optimizer.name": "sgd", "optimizer.lr": 1.0,
          "optimizer.grad_clip": 0.0})
      learner = learner_lib.Learner(CONFIG, cfg, params, compiler_options=FAST_COMPILE)
      metrics = learner.step("grpo", batch, temperature=0.7)
      out[fast] = metrics, jax.device_get(learner.params)
    for k in ("loss", "pg_loss", "kl", "entropy", "sampler_approx_kl", "grad_norm"):
      np.testing.assert_allclose(out[True][0][k], out[False][0][k], rtol=1e-5, err_msg=k)
    # Plain SGD with lr 1: the param change is the gradient itself.
    for a, b in zip(jax.tree.leaves(out[True][1]), jax.tree.leaves(out[False][1])):
      np.testing.assert_allclose(a, b, atol=1e-5)


if __name__ == "__main__":
  absltest.main()
