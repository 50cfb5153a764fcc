"""Tests for evejax.rl.advantages."""

import os
import statistics

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import jax
import numpy as np

from evejax.rl import advantages


def _np_grpo(rewards, group_size, normalize_std, eps=1e-6):
  """Loop reference using the statistics module (sample std, ddof=1)."""
  out = []
  for g in range(0, len(rewards), group_size):
    group = [float(x) for x in rewards[g:g + group_size]]
    if len(group) == 1:
      mean, std = 0.0, 1.0
    else:
      mean, std = statistics.mean(group), statistics.stdev(group)
    for r in group:
      if len(group) > 1 and max(group) == min(group):
        out.append(0.0)
      elif normalize_std:
        out.append((r - mean) / (std + eps))
      else:
        out.append(r - mean)
  return np.array(out)


class GroupAdvantagesTest(absltest.TestCase):

  def test_grpo_matches_reference(self):
    rng = np.random.default_rng(0)
    rewards = rng.uniform(size=12).astype(np.float32)
    rewards[4:8] = 0.7  # a zero-variance group
    adv, stats = advantages.group_advantages(rewards, 4)
    np.testing.assert_allclose(adv, _np_grpo(rewards, 4, True), rtol=1e-5,
                               atol=1e-6)
    self.assertEqual(int(stats["zero_variance_groups"]), 1)
    self.assertAlmostEqual(float(stats["zero_variance_fraction"]), 1 / 3)

  def test_hand_computed_group(self):
    # rewards 0, 1: mean 0.5, sample std sqrt(0.5) -> +-0.5 / 0.70710...
    adv, _ = advantages.group_advantages(np.array([0.0, 1.0]), 2, eps=0.0)
    np.testing.assert_allclose(adv, [-0.5 / 0.5 ** 0.5, 0.5 / 0.5 ** 0.5],
                               rtol=1e-6)

  def test_zero_variance_is_exactly_zero(self):
    adv, stats = advantages.group_advantages(np.full(6, 0.1), 3)
    np.testing.assert_array_equal(adv, 0.0)
    self.assertEqual(int(stats["zero_variance_groups"]), 2)

  def test_dr_grpo_no_division(self):
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 2.0, 4.0], np.float32)
    adv, _ = advantages.get_advantage_estimator("dr_grpo")(rewards, 3)
    np.testing.assert_allclose(adv, _np_grpo(rewards, 3, False), rtol=1e-6)
    np.testing.assert_allclose(adv[:3], [2 / 3, -1 / 3, -1 / 3], rtol=1e-6)

  def test_group_of_one(self):
    rewards = np.array([0.3, -2.0], np.float32)
    adv, stats = advantages.group_advantages(rewards, 1)
    np.testing.assert_allclose(adv, rewards / (1 + 1e-6), rtol=1e-6)
    self.assertEqual(int(stats["zero_variance_groups"]), 0)
    adv_dr, _ = advantages.dr_grpo_advantages(rewards, 1)
    np.testing.assert_allclose(adv_dr, rewards)

  def test_jit_with_static_group_size(self):
    rewards = np.arange(8, dtype=np.float32) ** 2
    fn = jax.jit(advantages.group_advantages, static_argnums=1)
    np.testing.assert_allclose(fn(rewards, 4)[0], _np_grpo(rewards, 4, True),
                               rtol=1e-5)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "divide"):
      advantages.group_advantages(np.zeros(5), 2)
    with self.assertRaisesRegex(ValueError, "dr_grpo"):
      advantages.get_advantage_estimator("ppo")


class EmaBaselineTest(absltest.TestCase):

  def test_first_update_initialises_then_decays(self):
    b = advantages.EmaBaseline.create()
    b = advantages.ema_update(b, 0.8)
    self.assertAlmostEqual(float(b.value), 0.8, places=6)
    b = advantages.ema_update(b, 0.2)
    # 0.9 * 0.8 + 0.1 * 0.2 = 0.74
    self.assertAlmostEqual(float(b.value), 0.74, places=6)
    b = advantages.ema_update(b, 1.0, momentum=0.5)
    self.assertAlmostEqual(float(b.value), 0.87, places=6)

  def test_ema_advantages_use_pre_batch_baseline(self):
    state = advantages.EmaBaseline.create()
    adv, state = advantages.ema_advantages(np.array([1.0, 0.0]), state)
    np.testing.assert_allclose(adv, [0.5, -0.5])  # first batch: centred
    self.assertAlmostEqual(float(state.value), 0.5)
    adv, state = advantages.ema_advantages(np.array([1.0, 1.0]), state)
    np.testing.assert_allclose(adv, [0.5, 0.5])  # against 0.5, not 0.55
    self.assertAlmostEqual(float(state.value), 0.55, places=6)

  def test_state_is_a_jittable_pytree(self):
    step = jax.jit(advantages.ema_advantages)
    state = advantages.EmaBaseline.create()
    _, state = step(np.array([2.0, 4.0]), state)
    _, state = step(np.array([0.0, 0.0]), state)
    self.assertAlmostEqual(float(state.value), 2.7, places=5)
    self.assertLen(jax.tree_util.tree_leaves(state), 2)


if __name__ == "__main__":
  absltest.main()
