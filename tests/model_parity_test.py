"""evejax Qwen2.5-VL vs transformers on tiny random checkpoints (fp32, CPU)."""

from absl.testing import absltest
import pytest
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from evejax.models import hf, vlm
from evejax.models.inputs import ModelInputs
from evejax.processing.patch_layout import patch_layout
import testing_hf

pytestmark = pytest.mark.slow   # a torch parity suite

TOL = 1e-4
_forward = jax.jit(vlm.forward, static_argnums=1)


def _device(inputs: ModelInputs) -> ModelInputs:
  return jax.tree.map(jnp.asarray, inputs)


class ParityTest(absltest.TestCase):
  """Config A: tied, 3 heads / 1 kv head, full-attention blocks 0 and 2.
  Config B: untied, 4/2 heads, 2 vision heads, one full block, 3 layers."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.a = testing_hf.TinyCheckpoint(seed=1, tie=True, heads=3, kv_heads=1,
                                      vision_heads=3, fullatt=(0, 2))
    cls.b = testing_hf.TinyCheckpoint(
        seed=2, tie=False, heads=4, kv_heads=2, num_layers=3, vision_heads=2,
        vision_depth=2, fullatt=(1,), mrope_section=(2, 2, 2), hidden=48,
        rope_theta=1e6)
    cls.params_a = hf.load_params(cls.a.dir, cls.a.config)
    cls.params_b = hf.load_params(cls.b.dir, cls.b.config)
    # Image sizes in pixels; window = 56 px = 2x2 merged units, so 84x140
    # (3x5 merged units) has partial windows on both edges.
    cls.segs_a = [[4, (84, 140), 3, (56, 84), 2], [3, (84, 56), 5], [7]]
    cls.ex_a, cls.pos_a, cls.ref_a = cls.a.examples(cls.segs_a, seed=3)
    # Batch of 4 so the sharded test can split it over data x fsdp.
    segs_b = [[2, (112, 56), 3, (56, 140), 1], [5, (84, 84), 2], [6],
              [1, (56, 56)]]
    cls.ex_b, cls.pos_b, cls.ref_b = cls.b.examples(segs_b, seed=4)

  @classmethod
  def tearDownClass(cls):
    cls.a.cleanup()
    cls.b.cleanup()
    super().tearDownClass()

  def _check_vs_hf(self, params, config, exs, pos, refs, pad="right", **kw):
    inputs = testing_hf.to_model_inputs(config, exs, pos, pad=pad, **kw)
    logits = _forward(params, config, _device(inputs))
    ours = testing_hf.real_logits(logits, inputs)
    for i, (o, r) in enumerate(zip(ours, refs)):
      self.assertLessEqual(testing_hf.max_diff(o, r), TOL, f"example {i}")
    return ours

  def test_forward_matches_hf_tied_odd_heads(self):
    # Extra padding patch rows (P beyond the real rows) must change nothing.
    self._check_vs_hf(self.params_a, self.a.config, self.ex_a, self.pos_a,
                      self.ref_a, num_patches=128)

  def test_forward_matches_hf_untied(self):
    self._check_vs_hf(self.params_b, self.b.config, self.ex_b, self.pos_b,
                      self.ref_b)

  def test_left_padding_matches_hf(self):
    self._check_vs_hf(self.params_a, self.a.config, self.ex_a, self.pos_a,
                      self.ref_a, pad="left", num_patches=128)

  def test_text_only_batch(self):
    exs, pos, refs = self.a.examples([[6], [11]], seed=5)
    inputs = testing_hf.to_model_inputs(self.a.config, exs, pos)
    self.assertEqual(inputs.num_patches, 0)
    ours = testing_hf.real_logits(
        _forward(self.params_a, self.a.config, _device(inputs)), inputs)
    for o, r in zip(ours, refs):
      self.assertLessEqual(testing_hf.max_diff(o, r), TOL)

  def test_prefill_decode_matches_forward(self):
    config, params = self.a.config, self.params_a
    prompts = testing_hf.to_model_inputs(config, self.ex_a, self.pos_a,
                                         pad="left")
    b, t = prompts.tokens.shape
    steps = 3
    new = np.random.default_rng(0).integers(0, 90, (b, steps)).astype(np.int32)
    last, cache = jax.jit(vlm.prefill, static_argnums=(1, 3))(
        params, config, _device(prompts), t + steps + 2)
    decode = jax.jit(vlm.decode_step, static_argnums=1, donate_argnums=3)
    step_logits = []
    for j in range(steps):
      lg, cache = decode(params, config, jnp.asarray(new[:, j]), cache)
      step_logits.append(np.asarray(lg))
    # The same sequences in one forward pass: generated tokens continue from
    # the prompt's max position + 1.
    start = np.asarray(prompts.positions).max(axis=(0, 2)) + 1
    gen_pos = start[None, :, None] + np.arange(steps)[None, None, :]
    full = prompts.replace(
        tokens=np.concatenate([prompts.tokens, new], 1),
        mask=np.concatenate([prompts.mask, np.ones_like(new)], 1),
        positions=np.concatenate(
            [prompts.positions, np.broadcast_to(gen_pos, (3, b, steps))], 2))
    ref = np.asarray(_forward(params, config, _device(full)))
    self.assertLessEqual(testing_hf.max_diff(last, ref[:, t - 1]), TOL)
    for j in range(steps):
      self.assertLessEqual(
          testing_hf.max_diff(step_logits[j], ref[:, t + j]), TOL, f"step {j}")
    self.assertEqual(int(cache.index), t + steps)
    np.testing.assert_array_equal(cache.position, start + steps)
    # The prompt's own logits also match HF (left-padded prefix of `full`).
    for i, r in enumerate(self.ref_a):
      n = len(r)
      self.assertLessEqual(testing_hf.max_diff(ref[i, t - n:t], r), TOL)

  def test_sharded_forward_equals_single_device(self):
    config, params = self.b.config, self.params_b
    host_inputs = testing_hf.to_model_inputs(config, self.ex_b, self.pos_b)
    inputs = _device(host_inputs)
    single = np.asarray(_forward(params, config, inputs))  # cached compile

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    rules = {"batch": ("data", "fsdp"), "embed": "fsdp",
             "vision_embed": "fsdp", "mlp": "tensor", "vision_mlp": "tensor",
             "heads": "tensor", "kv_heads": "tensor", "vocab": "tensor"}

    def spec(shape, names):
      # Shard a dim only where its mesh axes divide it; replicate otherwise.
      out = []
      for dim, name in zip(shape, names):
        axes = rules.get(name)
        size = np.prod([mesh.shape[a] for a in np.atleast_1d(axes)]) if axes else 1
        out.append(axes if axes and dim % size == 0 else None)
      return NamedSharding(mesh, P(*out))

    axes = vlm.param_axes(config)
    shardings = jax.tree.map(lambda x, a: spec(x.shape, a), params, axes)
    sharded_params = jax.device_put(params, shardings)
    n_sharded = sum(not s.is_fully_replicated
                    for s in jax.tree.leaves(shardings))
    self.assertGreater(n_sharded, 10)
    batch_spec = lambda x, ax: spec(x.shape, (None,) * ax + ("batch",))
    in_shardings = ModelInputs(
        **{f: batch_spec(getattr(inputs, f), 1 if f == "positions" else 0)
           for f in ("tokens", "mask", "positions", "patches", "patch_coords",
                     "patch_image", "patch_window")})
    sharded_inputs = jax.device_put(inputs, in_shardings)
    out = _forward(sharded_params, config, sharded_inputs)
    self.assertLen(out.sharding.device_set, 8)
    self.assertLessEqual(testing_hf.max_diff(out, single), 1e-5)
    for o, r in zip(testing_hf.real_logits(out, host_inputs), self.ref_b):
      self.assertLessEqual(testing_hf.max_diff(o, r), TOL)


class PatchLayoutTest(absltest.TestCase):

  def test_matches_transformers_rotary_ids_and_windows(self):
    import torch
    from transformers import vision_utils
    from evejax.models.presets import VisionConfig
    vision = VisionConfig(window_size=112)  # 4x4 merged units per window
    grids = [(1, 10, 14), (1, 20, 6), (1, 2, 2)]
    lay = patch_layout(grids, vision)
    thw = torch.tensor(grids)
    hf_pos = vision_utils.get_vision_position_ids(thw, 2).numpy()
    np.testing.assert_array_equal(lay["coords"], hf_pos)
    np.testing.assert_array_equal(
        lay["image"], np.repeat(np.arange(3), [140, 120, 4]))
    index, cu = vision_utils.get_vision_window_index(thw, 2, 112, 14)
    rows = (index.numpy()[:, None] * 4 + np.arange(4)).ravel()  # window order
    cu = cu.numpy()
    seen = set()
    for lo, hi in zip(cu[:-1], cu[1:]):
      ids = np.unique(lay["window"][rows[lo:hi]])
      self.assertLen(ids, 1)  # one HF window == one evejax window id
      self.assertNotIn(ids[0], seen)
      seen.add(ids[0])
    self.assertLen(seen, len(np.unique(lay["window"])))

  def test_rejects_video_and_odd_grids(self):
    from evejax.models.presets import VisionConfig
    with self.assertRaisesRegex(ValueError, "still images"):
      patch_layout([(2, 4, 4)], VisionConfig())
    with self.assertRaisesRegex(ValueError, "multiple of spatial_merge_size"):
      patch_layout([(1, 5, 4)], VisionConfig())


if __name__ == "__main__":
  absltest.main()
