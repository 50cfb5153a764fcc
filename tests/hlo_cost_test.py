"""hlo_cost counts every loop of a compiled program by its trip count.

The FLOPs of each program are set against the matmuls it was written with:
2 * M * K * N per matmul, times how often it runs.
"""
from absl.testing import absltest
import jax
import jax.numpy as jnp

from evejax import parallel
from evejax.tools import hlo_cost
from evejax.tools import targets

N = 256
MATMUL = 2 * N ** 3


def _cost(fn, *args):
  return hlo_cost.loop_aware_cost(jax.jit(fn).lower(*args).compile())


class LoopCountsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.x = jax.ShapeDtypeStruct((N, N), jnp.float32)

  def test_scan_counts_each_iteration(self):
    def fn(x):
      return jax.lax.scan(lambda c, _: (jnp.tanh(c @ x), None), x, length=7)[0]
    cost = _cost(fn, self.x)
    self.assertEqual([t for _, t in cost.loops], [7])
    self.assertBetween(cost.flops / MATMUL, 7, 7.05)
    self.assertBetween(cost.flops_once / MATMUL, 1, 1.05)   # XLA's own count: one body

  def test_a_counter_that_steps_by_two_runs_half_as_often(self):
    # i = 0, 2, 4, 6, 8: five matmuls, not ten.
    def fn(x):
      return jax.lax.while_loop(lambda s: s[0] < 10,
                                lambda s: (s[0] + 2, jnp.tanh(s[1] @ x)), (0, x))[1]
    cost = _cost(fn, self.x)
    self.assertEqual([t for _, t in cost.loops], [5])
    self.assertBetween(cost.flops / MATMUL, 5, 5.05)

  def test_a_counter_that_starts_late(self):
    def fn(x):
      return jax.lax.fori_loop(3, 9, lambda i, c: jnp.tanh(c @ x), x)
    cost = _cost(fn, self.x)
    self.assertEqual([t for _, t in cost.loops], [6])
    self.assertBetween(cost.flops / MATMUL, 6, 6.05)


@absltest.skipUnless(targets.libtpu_installed(), "needs libtpu: pip install -e '.[tpu]'")
class WindowedEinsumTest(absltest.TestCase):
  """On 8 chips the TPU compiler overlaps an FSDP all-gather with its matmul in a
  loop unrolled by two (a windowed einsum): still one matmul's worth of FLOPs."""

  def test_fsdp_matmul_on_8_chips_counts_once(self):
    targets.setup_host()
    mesh = parallel.make_mesh({"fsdp": 8}, devices=targets.devices(targets.topology("tpu:v5p-16")))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    rows, k, n = 8192, 1024, 1024
    x = jax.ShapeDtypeStruct((rows, k), jnp.bfloat16, sharding=sharded)
    w = jax.ShapeDtypeStruct((k, n), jnp.bfloat16, sharding=sharded)
    compiled = jax.jit(lambda x, w: x @ w, out_shardings=sharded).lower(x, w).compile()
    self.assertIn("windowed_dot_general", compiled.as_text())   # the loop this is about
    cost = hlo_cost.loop_aware_cost(compiled)
    self.assertNotEmpty(cost.loops)
    self.assertBetween(cost.flops / (2 * rows * k * n / 8), 1.0, 1.05)


if __name__ == "__main__":
  absltest.main()
