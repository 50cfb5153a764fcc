"""Tests for evejax.rl.losses against loop-based numpy references."""

import math
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from evejax.rl import losses

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _batch(seed=0, b=5, t=7):
  """Random log-probs with ratios both inside and outside the clip range."""
  rng = np.random.default_rng(seed)
  old = -rng.uniform(0.1, 3.0, (b, t))
  logp = old + rng.normal(0.0, 0.4, (b, t))
  logp[0, 0] = old[0, 0] + 25.0  # exercises the log-ratio clamp
  adv = rng.normal(0.0, 1.5, (b,))
  adv[1] = -2.0
  lengths = rng.integers(1, t + 1, (b,))
  lengths[2] = 0  # an empty (padding) row
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
  mask[0, 0] = 1.0
  return logp, old, adv, mask


def _np_aggregate(values, mask, mode, norm_constant=None):
  """Loop implementation of the three aggregation modes."""
  b, t = values.shape
  if mode == "token-mean":
    total, count = 0.0, 0.0
    for i in range(b):
      for j in range(t):
        if mask[i, j]:
          total += values[i, j] * mask[i, j]
          count += mask[i, j]
    return total / count if count else 0.0
  row_values = []
  for i in range(b):
    s, n = 0.0, 0.0
    for j in range(t):
      if mask[i, j]:
        s += values[i, j] * mask[i, j]
        n += mask[i, j]
    if n == 0:
      continue  # padding row
    if mode == "seq-mean-token-mean":
      row_values.append(s / n)
    else:
      row_values.append(s / (t if norm_constant is None else norm_constant))
  return sum(row_values) / len(row_values) if row_values else 0.0


def _np_ppo(logp, old, adv, mask, clip_low, clip_high, dual_clip, clamp=20.0):
  """Per-token PPO loss with dual clip, and the diagnostics, by loops."""
  b, t = logp.shape
  loss = np.zeros((b, t))
  clipped = np.zeros((b, t))
  dual = np.zeros((b, t))
  ratio = np.zeros((b, t))
  neg_log_ratio = np.zeros((b, t))
  for i in range(b):
    a = adv[i]
    for j in range(t):
      lr = min(max(logp[i, j] - old[i, j], -clamp), clamp)
      r = math.exp(lr)
      l_plain = -a * r
      l_clip = -a * min(max(r, 1 - clip_low), 1 + clip_high)
      l = max(l_plain, l_clip)
      clipped[i, j] = float(l_clip > l_plain)
      if dual_clip is not None and a < 0:
        if l > -a * dual_clip:
          dual[i, j] = 1.0
          l = -a * dual_clip
      loss[i, j] = l
      ratio[i, j] = r
      neg_log_ratio[i, j] = -lr
  return loss, clipped, dual, ratio, neg_log_ratio


def _np_masked_mean(x, mask):
  num = sum(x[i, j] for i in range(x.shape[0]) for j in range(x.shape[1])
            if mask[i, j])
  den = sum(1 for i in range(x.shape[0]) for j in range(x.shape[1])
            if mask[i, j])
  return num / den


class AggregateTest(parameterized.TestCase):

  @parameterized.parameters(*MODES)
  def test_matches_loops(self, mode):
    rng = np.random.default_rng(1)
    values = rng.normal(size=(4, 6))
    mask = (rng.uniform(size=(4, 6)) > 0.4).astype(np.float32)
    mask[3] = 0.0
    got = losses.aggregate(values, mask, mode)
    np.testing.assert_allclose(got, _np_aggregate(values, mask, mode),
                               rtol=1e-5)

  def test_sum_norm_constant(self):
    rng = np.random.default_rng(2)
    values = rng.normal(size=(3, 5))
    mask = np.ones((3, 5))
    got = losses.aggregate(values, mask, "seq-mean-token-sum-norm",
                           norm_constant=64.0)
    np.testing.assert_allclose(
        got, _np_aggregate(values, mask, "seq-mean-token-sum-norm", 64.0),
        rtol=1e-5)

  def test_all_masked_gives_zero_not_nan(self):
    values = np.full((2, 3), np.nan)
    for mode in MODES:
      self.assertEqual(float(losses.aggregate(values, np.zeros((2, 3)), mode)),
                       0.0)

  def test_unknown_mode_lists_valid(self):
    with self.assertRaisesRegex(ValueError, "token-mean"):
      losses.aggregate(np.ones((1, 1)), np.ones((1, 1)), "seq-mean")


class PolicyLossTest(parameterized.TestCase):

  @parameterized.product(mode=MODES, dual_clip=(3.0, None),
                         clips=((0.2, 0.2), (0.2, 0.3)))
  def test_ppo_matches_loops(self, mode, dual_clip, clips):
    logp, old, adv, mask = _batch()
    clip_low, clip_high = clips
    loss, metrics = losses.policy_loss(
        logp, old, adv, mask, clip_low=clip_low, clip_high=clip_high,
        dual_clip=dual_clip, agg=mode)
    ref, clipped, dual, ratio, nlr = _np_ppo(logp, old, adv, mask, clip_low,
                                             clip_high, dual_clip)
    np.testing.assert_allclose(loss, _np_aggregate(ref, mask, mode),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"],
                               _np_masked_mean(clipped, mask), rtol=1e-5)
    np.testing.assert_allclose(metrics["dual_clip_fraction"],
                               _np_masked_mean(dual, mask), rtol=1e-5)
    np.testing.assert_allclose(metrics["approx_kl"],
                               _np_masked_mean(nlr, mask), rtol=1e-5)
    np.testing.assert_allclose(metrics["ratio_mean"],
                               _np_masked_mean(ratio, mask), rtol=1e-5)
    np.testing.assert_allclose(
        metrics["ratio_max"], max(ratio[i, j] for i in range(ratio.shape[0])
                                  for j in range(ratio.shape[1]) if mask[i, j]),
        rtol=1e-5)

  def test_dual_clip_bounds_negative_advantage_loss(self):
    # ratio = e^3 ~ 20 with A = -1: PPO alone gives 20, dual clip caps at 3.
    logp = np.array([[0.0, 0.0]])
    old = np.array([[-3.0, -3.0]])
    mask = np.ones((1, 2))
    adv = np.array([-1.0])
    loss, metrics = losses.policy_loss(logp, old, adv, mask, dual_clip=3.0)
    self.assertAlmostEqual(float(loss), 3.0, places=5)
    self.assertEqual(float(metrics["dual_clip_fraction"]), 1.0)
    loss_off, metrics_off = losses.policy_loss(logp, old, adv, mask,
                                               dual_clip=None)
    self.assertAlmostEqual(float(loss_off), math.exp(3.0), places=3)
    self.assertEqual(float(metrics_off["dual_clip_fraction"]), 0.0)
    # The capped branch is constant: no gradient through those tokens.
    grad_fn = jax.grad(lambda lp: losses.policy_loss(lp, old, adv, mask)[0])
    grad = jax.jit(grad_fn)(jnp.asarray(logp))
    np.testing.assert_array_equal(grad, 0.0)

  def test_dual_clip_ignores_positive_advantages(self):
    logp = np.array([[0.0]])
    old = np.array([[-3.0]])
    mask = np.ones((1, 1))
    loss, metrics = losses.policy_loss(logp, old, np.array([1.0]), mask)
    # A > 0, ratio above 1 + eps: clipped branch -> -1.2, dual clip inactive.
    self.assertAlmostEqual(float(loss), -1.2, places=5)
    self.assertEqual(float(metrics["dual_clip_fraction"]), 0.0)
    self.assertEqual(float(metrics["clip_fraction"]), 1.0)

  def test_on_policy_gradient_is_minus_advantage(self):
    # At ratio 1 the PPO gradient wrt logp is -A / num_tokens per token.
    logp = np.log(np.array([[0.5, 0.25, 0.5]]))
    mask = np.array([[1.0, 1.0, 0.0]])
    adv = np.array([2.0])
    grad_fn = jax.grad(lambda lp: losses.policy_loss(lp, logp, adv, mask)[0])
    grad = jax.jit(grad_fn)(jnp.asarray(logp))
    np.testing.assert_allclose(grad, [[-1.0, -1.0, 0.0]], rtol=1e-6)

  @parameterized.parameters(*MODES)
  def test_microbatch_terms_sum_to_full_batch(self, mode):
    logp, old, adv, mask = _batch(seed=3, b=6)
    mask[4] = 0.0
    kw = dict(agg=mode, norm_constant=7.0)
    full, _ = losses.policy_loss(logp, old, adv, mask, **kw)
    # Equal-sized micro-batches share one compiled gradient function; the
    # second holds the empty row, so the denominators differ.
    parts = [slice(0, 3), slice(3, 6)]
    terms = [losses.policy_loss_terms(logp[s], old[s], adv[s], mask[s], **kw)
             for s in parts]
    num = sum(t[0] for t in terms)
    den = sum(t[1] for t in terms)
    np.testing.assert_allclose(num / den, full, rtol=1e-5)
    sums = losses.merge_sums(terms[0][2], terms[1][2])
    _, full_metrics = losses.policy_loss(logp, old, adv, mask, **kw)
    merged = losses.finalize_metrics(sums)
    for k in ("clip_fraction", "approx_kl", "ratio_mean", "ratio_max"):
      np.testing.assert_allclose(merged[k], full_metrics[k], rtol=1e-5)
    # Exact accumulation of gradients: d(num_m / total_den) summed over m.
    full_grad = jax.jit(jax.grad(lambda lp: losses.policy_loss(
        lp, old, adv, mask, **kw)[0]))(logp)
    micro_grad = jax.jit(jax.grad(
        lambda lp, o, a, m, d: losses.policy_loss_terms(lp, o, a, m, **kw)[0]
        / d))
    acc = np.concatenate([np.asarray(micro_grad(
        logp[s], old[s], adv[s], mask[s], den)) for s in parts])
    np.testing.assert_allclose(acc, full_grad, rtol=1e-5, atol=1e-7)

  def test_gspo_matches_loops(self):
    logp, old, adv, mask = _batch(seed=4)
    logp[0, 0] = old[0, 0] + 0.3
    clip_low, clip_high = 3e-4, 4e-4
    loss, _ = losses.policy_loss(
        logp, old, adv, mask, loss_type="gspo", clip_low=clip_low,
        clip_high=clip_high, agg="seq-mean-token-mean")
    per_row = []
    for i in range(logp.shape[0]):
      idx = [j for j in range(logp.shape[1]) if mask[i, j]]
      if not idx:
        continue
      s = math.exp(sum(logp[i, j] - old[i, j] for j in idx) / len(idx))
      a = adv[i]
      per_row.append(max(-a * s, -a * min(max(s, 1 - clip_low), 1 + clip_high)))
    np.testing.assert_allclose(loss, sum(per_row) / len(per_row), rtol=1e-5)

  def test_jit(self):
    logp, old, adv, mask = _batch()
    fn = jax.jit(lambda *a: losses.policy_loss(*a, agg="seq-mean-token-mean"))
    eager, _ = losses.policy_loss(logp, old, adv, mask,
                                  agg="seq-mean-token-mean")
    np.testing.assert_allclose(fn(logp, old, adv, mask)[0], eager, rtol=1e-6)

  def test_bad_names_and_values(self):
    logp, old, adv, mask = _batch()
    with self.assertRaisesRegex(ValueError, "ppo_clip"):
      losses.policy_loss(logp, old, adv, mask, loss_type="ppo")
    with self.assertRaisesRegex(ValueError, "dual_clip"):
      losses.policy_loss(logp, old, adv, mask, dual_clip=0.5)


class KlTest(parameterized.TestCase):

  @parameterized.parameters("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")
  def test_estimators_match_loops(self, kind):
    rng = np.random.default_rng(5)
    logp = -rng.uniform(0.1, 4.0, (3, 5))
    ref = -rng.uniform(0.1, 4.0, (3, 5))
    ref[0, 0] = logp[0, 0] + 30.0  # d beyond the clamp, value beyond 10
    got = np.asarray(losses.kl_penalty(logp, ref, kind))
    for i in range(3):
      for j in range(5):
        x, r = logp[i, j], ref[i, j]
        if kind in ("k1", "kl"):
          want = x - r
        elif kind == "abs":
          want = abs(x - r)
        elif kind in ("k2", "mse"):
          want = 0.5 * (x - r) ** 2
        else:
          d = min(max(r - x, -20.0), 20.0)
          want = min(max(math.exp(d) - d - 1.0, -10.0), 10.0)
        np.testing.assert_allclose(got[i, j], want, rtol=1e-5, atol=1e-6)
    if kind in ("k3", "low_var_kl"):
      self.assertEqual(got[0, 0], 10.0)

  def test_kl_zero_when_equal_and_aggregates(self):
    logp = -np.ones((2, 3))
    for kind in ("k1", "k2", "k3"):
      self.assertEqual(
          float(losses.aggregate(losses.kl_penalty(logp, logp, kind),
                                 np.ones((2, 3)))), 0.0)

  def test_no_gradient_into_reference(self):
    g = jax.grad(lambda r: losses.kl_penalty(jnp.zeros(3), r, "k3").sum())(
        jnp.ones(3))
    np.testing.assert_array_equal(g, 0.0)

  def test_unknown_estimator(self):
    with self.assertRaisesRegex(ValueError, "low_var_kl"):
      losses.kl_penalty(np.zeros(2), np.zeros(2), "k4")


class FullVocabTest(absltest.TestCase):

  def _logits(self):
    rng = np.random.default_rng(6)
    return (rng.normal(size=(2, 4, 9)) * 2,
            rng.normal(size=(2, 4, 9)) * 2,
            np.array([[1, 1, 0, 0], [1, 1, 1, 0]], np.float32))

  def test_full_vocab_kl(self):
    pol, ref, mask = self._logits()
    got = losses.full_vocab_kl(pol, ref, mask)
    vals = []
    for i in range(2):
      for j in range(4):
        if not mask[i, j]:
          continue
        p = np.exp(pol[i, j]) / np.exp(pol[i, j]).sum()
        q = np.exp(ref[i, j]) / np.exp(ref[i, j]).sum()
        vals.append(sum(p[v] * math.log(p[v] / q[v]) for v in range(9)))
    np.testing.assert_allclose(got, sum(vals) / len(vals), rtol=1e-5)
    self.assertAlmostEqual(float(losses.full_vocab_kl(pol, pol, mask)), 0.0,
                           places=6)

  def test_entropy(self):
    pol, _, mask = self._logits()
    got = losses.entropy_from_logits(pol, mask)
    vals = []
    for i in range(2):
      for j in range(4):
        if mask[i, j]:
          p = np.exp(pol[i, j]) / np.exp(pol[i, j]).sum()
          vals.append(-sum(p[v] * math.log(p[v]) for v in range(9)))
    np.testing.assert_allclose(got, sum(vals) / len(vals), rtol=1e-5)
    uniform = losses.entropy_from_logits(np.zeros((1, 1, 9)), np.ones((1, 1)))
    self.assertAlmostEqual(float(uniform), math.log(9), places=5)

  def test_bf16_logits_are_upcast(self):
    pol, ref, mask = self._logits()
    got = losses.full_vocab_kl(jnp.asarray(pol, jnp.bfloat16),
                               jnp.asarray(ref, jnp.bfloat16), mask)
    self.assertEqual(got.dtype, jnp.float32)

  def test_adaptive_kl_update(self):
    # KL above target raises beta: 1e-3 * exp(0.1 * (0.04 - 0.02) / 0.02).
    self.assertAlmostEqual(float(losses.adaptive_kl_update(1e-3, 0.04)),
                           1e-3 * math.exp(0.1), places=9)
    self.assertAlmostEqual(float(losses.adaptive_kl_update(1e-3, 0.0)),
                           1e-3 * math.exp(-0.1), places=9)
    self.assertEqual(float(losses.adaptive_kl_update(99.0, 10.0)), 100.0)
    self.assertAlmostEqual(float(losses.adaptive_kl_update(1e-8, 0.0)), 1e-8)


class ReinforceSftTest(absltest.TestCase):

  def test_reinforce_matches_loops_and_gradient(self):
    rng = np.random.default_rng(7)
    logp = -rng.uniform(0.1, 3.0, (3, 4))
    mask = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    reward = np.array([1.0, 0.5, 0.2])
    baseline = 0.4
    loss, metrics = losses.reinforce_loss(logp, mask, reward, baseline)
    rows = []
    for i in range(3):
      toks = [logp[i, j] for j in range(4) if mask[i, j]]
      if toks:
        rows.append((reward[i] - baseline) * (-sum(toks) / len(toks)))
    np.testing.assert_allclose(loss, sum(rows) / len(rows), rtol=1e-5)
    self.assertAlmostEqual(
        float(metrics["nll"]), -(logp[0, :3].sum() + logp[2, 0]) / 4, places=5)
    grad = jax.jit(jax.grad(lambda lp: losses.reinforce_loss(
        lp, mask, reward, baseline)[0]))(jnp.asarray(logp))
    # Row 0: -(r - b) / (2 rows * 3 tokens); row 2: -(r - b) / (2 * 1).
    np.testing.assert_allclose(grad[0, 0], -(1.0 - 0.4) / 6, rtol=1e-5)
    np.testing.assert_allclose(grad[2, 0], -(0.2 - 0.4) / 2, rtol=1e-5)
    self.assertEqual(float(grad[1].sum()), 0.0)

  def test_sft(self):
    logp = np.log(np.array([[0.5, 0.25, 0.1]]))
    mask = np.array([[1.0, 1.0, 0.0]])
    loss, metrics = losses.sft_loss(logp, mask)
    self.assertAlmostEqual(float(loss), (math.log(2) + math.log(4)) / 2,
                           places=5)
    self.assertEqual(float(metrics["token_count"]), 2.0)


if __name__ == "__main__":
  absltest.main()
