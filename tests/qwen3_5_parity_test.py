"""evejax Qwen3.5 vs transformers on tiny random checkpoints (fp32, CPU).

Config A: untied, layer_types by interval 2 (L F L F: two blocks scanned),
2 key heads with 3 value heads each, dk 16 != dv 24, 4 query heads on 2 KV
heads, rotary on 8 of 32 head channels.
Config B: tied, layer_types given irregularly (F L L F L: one block of all
five), 1 key head with 4 value heads, 3 query heads on 1 KV head.
The prompts hold two images of different non-square sizes, text longer than
one 64-token chunk, and are padded on either side. `hf_parity.QWEN3_5_GAINS`
keeps the random network far from chaotic (transformers' own fp32 vs fp64
logits differ by ~1e-5), and `test_parity_sees_the_pitfalls` proves the
reference's pitfalls move logits well past the tolerance.
"""
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evejax import parallel
from evejax.models import hf, vlm
from evejax.models.inputs import ModelInputs
from evejax.models.qwen3_5 import delta_rule
from evejax.models.qwen3_5 import text as qwen3_5_text
import testing_hf

pytestmark = pytest.mark.slow   # a torch parity suite

TOL = 1e-4
# XLA's backend optimisations off: the compiles dominate this file's time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
_forward = jax.jit(vlm.forward, static_argnums=1, compiler_options=FAST_COMPILE)


def _device(inputs: ModelInputs) -> ModelInputs:
  return jax.tree.map(jnp.asarray, inputs)


_prepare = delta_rule.prepare


def _tiled_value_heads(q, k, v, beta, g, r):
  """The GGUF-style mapping: value head j reads key head j mod Hk."""
  q, k, v, beta, g = _prepare(q, k, v, beta, g, 1)
  return (jnp.tile(q, (1, 1, r, 1)), jnp.tile(k, (1, 1, r, 1)), v, beta, g)


class Qwen3_5ParityTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.a = testing_hf.TinyCheckpoint(
        family="qwen3_5", seed=1, num_layers=4, full_attention_interval=2)
    cls.b = testing_hf.TinyCheckpoint(
        family="qwen3_5", seed=2, tie=True, num_layers=5,
        layer_types=["full_attention", "linear_attention", "linear_attention",
                     "full_attention", "linear_attention"],
        heads=3, kv_heads=1, head_dim=16, mrope_section=(1, 1, 0),
        linear_key_heads=1, linear_value_heads=4, linear_key_dim=8,
        linear_value_dim=12, rope_theta=1e6)
    cls.params_a = hf.load_params(cls.a.dir, cls.a.config)
    cls.params_b = hf.load_params(cls.b.dir, cls.b.config)
    # Patch grids 6x10 and 2x8 in one prompt; 70 text tokens (> one chunk).
    cls.ex_a, cls.pos_a, cls.ref_a = cls.a.examples(
        [[4, (96, 160), 3, (32, 128), 2], [3, (64, 96), 5], [70]], seed=3)
    # Grids 8x4, 4x14, 4x4; 4 rows for the mesh test.
    cls.ex_b, cls.pos_b, cls.ref_b = cls.b.examples(
        [[2, (128, 64), 3, (64, 224), 1], [66], [6], [1, (64, 64)]], seed=4)

  @classmethod
  def tearDownClass(cls):
    cls.a.cleanup()
    cls.b.cleanup()
    super().tearDownClass()

  def _ours(self, params, config, exs, pos, pad="right", forward=_forward,
            **kw):
    inputs = testing_hf.to_model_inputs(config, exs, pos, pad=pad, **kw)
    return testing_hf.real_logits(forward(params, config, _device(inputs)),
                                  inputs)

  def _worst(self, ours, refs) -> float:
    return max(testing_hf.max_diff(o, r) for o, r in zip(ours, refs))

  def _check_vs_hf(self, params, config, exs, pos, refs, **kw):
    for i, (o, r) in enumerate(zip(self._ours(params, config, exs, pos, **kw),
                                   refs)):
      self.assertGreater(np.abs(r).max(), 2.0)  # logits of a real spread
      self.assertLessEqual(testing_hf.max_diff(o, r), TOL, f"example {i}")

  def test_config_is_the_family_with_its_shapes(self):
    a, b = self.a.config.text, self.b.config.text
    self.assertEqual(self.a.config.family, "qwen3_5")
    self.assertEqual((a.period, a.full_layers), (2, (1, 3)))
    self.assertEqual((b.period, b.full_layers), (5, (0, 3)))
    self.assertEqual((a.rotary_dim, a.value_heads_per_key_head), (8, 3))
    self.assertEqual(self.a.config.vision.deepstack_visual_indexes, ())
    self.assertTrue(b.tie_word_embeddings)
    blocks = self.params_a["text"]["layers"]
    self.assertEqual(sorted(blocks), ["full_0", "linear_0"])
    self.assertEqual(blocks["linear_0"]["in_qkv"]["kernel"].shape,
                     (2, 48, 2, 16 + 16 + 3 * 24))

  def test_forward_matches_hf_untied(self):
    # Extra padding patch rows (P beyond the real rows) must change nothing.
    self._check_vs_hf(self.params_a, self.a.config, self.ex_a, self.pos_a,
                      self.ref_a, num_patches=128)

  def test_left_padding_matches_hf(self):
    self._check_vs_hf(self.params_a, self.a.config, self.ex_a, self.pos_a,
                      self.ref_a, pad="left", num_patches=128)

  def test_forward_matches_hf_tied_irregular(self):
    self._check_vs_hf(self.params_b, self.b.config, self.ex_b, self.pos_b,
                      self.ref_b)

  def test_parity_sees_the_pitfalls(self):
    """Each wrong choice moves some logit by far more than the tolerance."""
    pitfalls = {
        "gated norm gate sigmoid": (qwen3_5_text, "gated_norm_gate",
                                    jax.nn.sigmoid),
        "attention gate silu": (qwen3_5_text, "attention_gate", jax.nn.silu),
        "no L2 norm of q, k": (delta_rule, "l2_normalize",
                               lambda x: x.astype(jnp.float32)),
        "value heads tiled": (delta_rule, "prepare", _tiled_value_heads),
        "no pad masking (left padded)": (qwen3_5_text, "mask_padding",
                                         lambda h, m: h),
    }
    for name, (owner, attr, wrong) in pitfalls.items():
      with mock.patch.object(owner, attr, wrong):
        # A fresh jit: the patched function is read while tracing.
        fresh = jax.jit(lambda p, x, c=self.a.config: vlm.forward(p, c, x),
                        compiler_options=FAST_COMPILE)
        ours = self._ours(self.params_a, self.a.config, self.ex_a, self.pos_a,
                          pad="left", forward=lambda p, c, x: fresh(p, x))
      self.assertGreater(self._worst(ours, self.ref_a), 5 * TOL, name)
    # Rounding A_log and the gated norms' scales to bf16 (why they stay fp32).
    def round_pinned(path, x):
      keys = [str(getattr(k, "key", k)) for k in path]
      pinned = keys[-1] == "A_log" or keys[-2:] == ["norm", "scale"]
      return x.astype(jnp.bfloat16).astype(x.dtype) if pinned else x
    rounded = jax.tree_util.tree_map_with_path(round_pinned, self.params_a)
    ours = self._ours(rounded, self.a.config, self.ex_a, self.pos_a)
    self.assertGreater(self._worst(ours, self.ref_a), 5 * TOL, "bf16 A_log")

  def test_prefill_decode_matches_forward(self):
    config, params = self.a.config, self.params_a
    prompts = testing_hf.to_model_inputs(config, self.ex_a, self.pos_a,
                                         pad="left")
    b, t = prompts.tokens.shape
    steps = 3
    new = np.random.default_rng(0).integers(0, 120, (b, steps)).astype(np.int32)
    fast = vlm.inference_params(params, config)
    prefill = jax.jit(vlm.prefill, static_argnums=(1, 3),
                      compiler_options=FAST_COMPILE)
    decode = jax.jit(vlm.decode_step, static_argnums=1,
                     compiler_options=FAST_COMPILE)
    start = np.asarray(prompts.positions).max(axis=(0, 2)) + 1
    gen_pos = start[None, :, None] + np.arange(steps)[None, None, :]
    full = prompts.replace(
        tokens=np.concatenate([prompts.tokens, new], 1),
        mask=np.concatenate([prompts.mask, np.ones_like(new)], 1),
        positions=np.concatenate(
            [prompts.positions, np.broadcast_to(gen_pos, (3, b, steps))], 2))
    ref = np.asarray(_forward(params, config, _device(full)))
    # Scanned and unrolled (sampling) layouts, the same logits.
    for layout in (params, fast):
      last, cache = prefill(layout, config, _device(prompts), t + steps + 2)
      self.assertLessEqual(testing_hf.max_diff(last, ref[:, t - 1]), 2e-5)
      for j in range(steps):
        lg, cache = decode(layout, config, jnp.asarray(new[:, j]), cache)
        self.assertLessEqual(testing_hf.max_diff(lg, ref[:, t + j]), 2e-5,
                             f"step {j}")
      self.assertEqual(int(cache.index), t + steps)
      np.testing.assert_array_equal(cache.position, start + steps)
      self.assertLen(cache.state, 2)
      self.assertEqual(cache.state[0].dtype, jnp.float32)
    for i, r in enumerate(self.ref_a):
      self.assertLessEqual(testing_hf.max_diff(ref[i, t - len(r):t], r), TOL)

  def test_sharded_forward_equals_single_device(self):
    config, params = self.b.config, self.params_b
    host_inputs = testing_hf.to_model_inputs(config, self.ex_b, self.pos_b)
    single = np.asarray(_forward(params, config, _device(host_inputs)))
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          params)
    shardings = parallel.shardings_for(vlm.param_axes(config), mesh,
                                       shapes_tree=shapes)
    self.assertGreater(
        sum(not s.is_fully_replicated for s in jax.tree.leaves(shardings)), 10)
    batch = parallel.batch_sharding(mesh, 1)
    from evejax.processing import batching  # pylint: disable=g-import-not-at-top
    out = _forward(jax.device_put(params, shardings), config,
                   batching.to_device(host_inputs, batch))
    self.assertLen(out.sharding.device_set, 8)
    # Sharded dots sum in another order: fp32 rounding (3e-5 seen, padding
    # rows included).
    np.testing.assert_allclose(out, single, atol=TOL, rtol=0)
    for o, r in zip(testing_hf.real_logits(out, host_inputs), self.ref_b):
      self.assertLessEqual(testing_hf.max_diff(o, r), TOL)


if __name__ == "__main__":
  absltest.main()
