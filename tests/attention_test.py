"""Query-blocked attention gives what one block gives, values and gradients."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from evejax.models import layers


class QueryBlockTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    b, t, h, kv, d = 2, 150, 4, 2, 8  # 150 = 2 blocks of 64 + a padded one
    self.q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
    self.k = jnp.asarray(rng.standard_normal((b, t, kv, d)), jnp.float32)
    self.v = jnp.asarray(rng.standard_normal((b, t, kv, d)), jnp.float32)
    causal = np.tril(np.ones((t, t), bool))[None]
    mask = causal & (rng.random((b, t, t)) < 0.8)
    mask[0, 70] = False  # a query that sees nothing: a zero row
    self.mask = jnp.asarray(mask)

  def _loss(self, q, k, v, block):
    out = layers.attention(q, k, v, self.mask, query_block=block)
    return jnp.sum(out * jnp.cos(out)), out

  def test_blocks_match_one_block(self):
    (l1, one), g1 = jax.value_and_grad(self._loss, (0, 1, 2), has_aux=True)(
        self.q, self.k, self.v, 1024)
    (l2, blocked), g2 = jax.value_and_grad(self._loss, (0, 1, 2), has_aux=True)(
        self.q, self.k, self.v, 64)
    np.testing.assert_allclose(blocked, one, atol=1e-6)
    np.testing.assert_array_equal(blocked[0, 70], 0.0)
    np.testing.assert_allclose(l2, l1, rtol=1e-6)
    for a, b in zip(g2, g1):
      np.testing.assert_allclose(a, b, atol=1e-5)

  def test_blocked_program_holds_one_block_of_scores(self):
    # 512 causal queries: one block's fp32 scores are 8 MiB; the gradient of
    # 64-query blocks needs less than half of that in all.
    rng = np.random.default_rng(1)
    b, t, h, kv, d = 2, 512, 4, 2, 8
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, t, kv, d)), jnp.float32)
    mask = jnp.asarray(np.tril(np.ones((t, t), bool))[None].repeat(b, 0))
    scores = b * h * t * t * 4

    def temp_bytes(block):
      loss = lambda q: jnp.sum(layers.attention(q, k, k, mask, query_block=block) ** 2)
      grad = jax.jit(jax.grad(loss))
      return grad.lower(q).compile().memory_analysis().temp_size_in_bytes
    self.assertGreaterEqual(temp_bytes(t), scores)
    self.assertLess(temp_bytes(64), scores / 1.5)

if __name__ == "__main__":
  absltest.main()
