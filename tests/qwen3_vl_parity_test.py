"""evejax Qwen3-VL vs transformers on tiny random checkpoints (fp32, CPU).

Config A: untied, 3 query heads on 1 KV head, head_dim 16 != 40 / 3, DeepStack
from vision blocks 0 and 2, a 4x4 position table.
Config B: tied, 5 query heads on 1 KV head, head_dim 12, DeepStack from blocks
1, 2 and 3, a 6x6 position table.
The prompts hold two images of different non-square sizes, and grids larger
and smaller than the table on each axis (it is resampled up and down). The
weights are scaled (`hf_parity.QWEN3_VL_GAINS`) so that the pitfalls the
parity could miss at default init (exact vs tanh GELU) move the logits well
past the tolerance: `test_parity_sees_the_pitfalls` proves it.
"""

from unittest import mock

from absl.testing import absltest
import pytest
import jax
import jax.numpy as jnp
import numpy as np

from evejax import parallel
from evejax.models import hf, vlm
from evejax.models.inputs import ModelInputs
from evejax.models.qwen3_vl import text as qwen3_text
from evejax.models.qwen3_vl import vision as qwen3_vision
from evejax.processing.patch_layout import patch_layout
import testing_hf

pytestmark = pytest.mark.slow   # a torch parity suite

TOL = 1e-4
_forward = jax.jit(vlm.forward, static_argnums=1)


def _device(inputs: ModelInputs) -> ModelInputs:
  return jax.tree.map(jnp.asarray, inputs)


class Qwen3VLParityTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.a = testing_hf.TinyCheckpoint(family="qwen3_vl", seed=1, tie=False)
    cls.b = testing_hf.TinyCheckpoint(
        family="qwen3_vl", seed=2, tie=True, hidden=48, heads=5, kv_heads=1,
        head_dim=12, mrope_section=(2, 2, 2), vision_heads=4,
        num_position_embeddings=36, deepstack=(1, 2, 3), rope_theta=1e6)
    cls.params_a = hf.load_params(cls.a.dir, cls.a.config)
    cls.params_b = hf.load_params(cls.b.dir, cls.b.config)
    # Patch grids 6x10 and 2x8 in one prompt (table 4x4: up, down-and-up).
    cls.segs_a = [[4, (96, 160), 3, (32, 128), 2], [3, (64, 96), 5], [7]]
    cls.ex_a, cls.pos_a, cls.ref_a = cls.a.examples(cls.segs_a, seed=3)
    # Grids 8x4, 4x14, 6x6 and 4x4 (table 6x6); 4 rows for the mesh test.
    segs_b = [[2, (128, 64), 3, (64, 224), 1], [5, (96, 96), 2], [6],
              [1, (64, 64)]]
    cls.ex_b, cls.pos_b, cls.ref_b = cls.b.examples(segs_b, seed=4)

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

  def _check_vs_hf(self, params, config, exs, pos, refs, **kw):
    for i, (o, r) in enumerate(zip(self._ours(params, config, exs, pos, **kw),
                                   refs)):
      self.assertGreater(np.abs(r).max(), 3.0)  # logits of a real spread
      self.assertLessEqual(testing_hf.max_diff(o, r), TOL, f"example {i}")

  def test_config_is_the_family_with_its_shapes(self):
    c = self.b.config
    self.assertEqual(c.family, "qwen3_vl")
    self.assertEqual((c.text.num_heads, c.text.num_kv_heads, c.text.head_dim),
                     (5, 1, 12))
    self.assertEqual(c.vision.deepstack_visual_indexes, (1, 2, 3))
    self.assertEqual(c.vision.position_side, 6)
    self.assertTrue(c.text.tie_word_embeddings)
    self.assertFalse(self.a.config.text.tie_word_embeddings)
    with self.assertRaisesRegex(ValueError, "family 'qwen3_vl'.*must agree"):
      c.replace(family="qwen2_5_vl")

  def test_forward_matches_hf_untied(self):
    # Extra padding patch rows (P beyond the real rows) must change nothing.
    self._check_vs_hf(self.params_a, self.a.config, self.ex_a, self.pos_a,
                      self.ref_a, num_patches=128)

  def test_forward_matches_hf_tied_odd_heads(self):
    self._check_vs_hf(self.params_b, self.b.config, self.ex_b, self.pos_b,
                      self.ref_b)

  def test_left_padding_matches_hf(self):
    self._check_vs_hf(self.params_a, self.a.config, self.ex_a, self.pos_a,
                      self.ref_a, pad="left", num_patches=128)

  def test_text_only_batch(self):
    exs, pos, refs = self.a.examples([[6], [11]], seed=5)
    inputs = testing_hf.to_model_inputs(self.a.config, exs, pos)
    self.assertEqual(inputs.num_patches, 0)
    self._check_vs_hf(self.params_a, self.a.config, exs, pos, refs)

  def test_parity_sees_the_pitfalls(self):
    """Each wrong choice moves some logit by far more than the tolerance."""
    exact = lambda x: jax.nn.gelu(x, approximate=False)
    tanh = lambda x: jax.nn.gelu(x, approximate=True)
    pitfalls = {
        "exact GELU in the block MLP": (qwen3_vision, "block_gelu", exact),
        "tanh GELU in the mergers": (qwen3_vision, "merger_gelu", tanh),
        "no DeepStack": (qwen3_text.DeepStack, "add_after",
                         lambda self, x, layer: x),
    }
    for name, (owner, attr, wrong) in pitfalls.items():
      with mock.patch.object(owner, attr, wrong):
        # A fresh jit: the patched function is read while tracing.
        fresh = jax.jit(lambda p, x, c=self.a.config: vlm.forward(p, c, x))
        ours = self._ours(self.params_a, self.a.config, self.ex_a, self.pos_a,
                          forward=lambda p, c, x: fresh(p, x))
      worst = max(testing_hf.max_diff(o, r) for o, r in zip(ours, self.ref_a))
      self.assertGreater(worst, 5 * TOL, name)

  def test_prefill_decode_matches_forward(self):
    config, params = self.a.config, self.params_a
    prompts = testing_hf.to_model_inputs(config, self.ex_a, self.pos_a,
                                         pad="left")
    b, t = prompts.tokens.shape
    steps = 3
    new = np.random.default_rng(0).integers(0, 120, (b, steps)).astype(np.int32)
    fast = vlm.inference_params(params, config)
    prefill = jax.jit(vlm.prefill, static_argnums=(1, 3))
    decode = jax.jit(vlm.decode_step, static_argnums=1)
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
      self.assertLessEqual(testing_hf.max_diff(last, ref[:, t - 1]), TOL)
      for j in range(steps):
        lg, cache = decode(layout, config, jnp.asarray(new[:, j]), cache)
        self.assertLessEqual(testing_hf.max_diff(lg, ref[:, t + j]), TOL,
                             f"step {j}")
      self.assertEqual(int(cache.index), t + steps)
      np.testing.assert_array_equal(cache.position, start + steps)
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
    # Sharded dots sum in another order: fp32 rounding of logits up to ~30.
    np.testing.assert_allclose(out, single, atol=3e-5, rtol=0)
    for o, r in zip(testing_hf.real_logits(out, host_inputs), self.ref_b):
      self.assertLessEqual(testing_hf.max_diff(o, r), TOL)


class PositionTableTest(absltest.TestCase):
  """The resampled table equals transformers' interpolation indices/weights."""

  def test_matches_transformers_bilinear_align_corners(self):
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import vision_utils  # pylint: disable=g-import-not-at-top
    from evejax.models.presets import Qwen3VisionConfig  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)
    vision = Qwen3VisionConfig()
    grids = [(1, 4, 6), (1, 6, 2), (1, 2, 2), (1, 60, 34), (1, 96, 48)]
    for side in (4, 48):
      table = rng.standard_normal((side * side, 8)).astype(np.float32)
      lay = patch_layout(grids, vision)
      sizes = qwen3_vision.image_grid_sizes(
          jnp.asarray(lay["coords"])[None], jnp.asarray(lay["image"])[None])[0]
      want_sizes = np.concatenate([np.repeat([[h, w]], h * w, 0)
                                   for _, h, w in grids])
      np.testing.assert_array_equal(sizes, want_sizes)
      ours = qwen3_vision.position_embedding(
          jnp.asarray(table), jnp.asarray(lay["coords"]), sizes, side)
      idx, w = vision_utils.get_vision_interpolation_indices_and_weights(
          torch.tensor(grids), side, mode="bilinear", align_corners=True,
          spatial_merge_size=2)
      ref = (table[idx.numpy()] * w.numpy()[..., None]).sum(1)
      np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0,
                                 err_msg=f"side {side}")

  def test_padding_rows_do_not_change_image_sizes(self):
    coords = jnp.asarray([[[0, 0], [0, 1], [1, 0], [1, 1], [0, 0], [0, 0]]])
    image = jnp.asarray([[0, 0, 0, 0, -1, -1]])
    sizes = qwen3_vision.image_grid_sizes(coords, image)
    np.testing.assert_array_equal(sizes[0, :4], [[2, 2]] * 4)


if __name__ == "__main__":
  absltest.main()
