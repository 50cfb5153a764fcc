"""The attention kernels equal the XLA path: splash (Pallas, interpret mode on
CPU) and the cuDNN path's own logic (rotation to right padding, lengths,
masks), run here through jax.nn.dot_product_attention's XLA implementation;
dispatch, fallbacks, the tiny models of both families, a mesh, and the GPU
benchmark script's dry run."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import subprocess  # noqa: E402
from unittest import mock  # noqa: E402

from absl.testing import absltest  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from evejax import parallel  # noqa: E402
from evejax.models import attention, layers, presets, vlm  # noqa: E402
from evejax.models.qwen2_5_vl import vision as qwen2_5_vision  # noqa: E402
from evejax.processing.patch_layout import patch_layout  # noqa: E402
from evejax.rl import synthetic  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _qkv(seed, b, t, h, kv, d, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  make = lambda heads: jnp.asarray(rng.standard_normal((b, t, heads, d)), dtype)
  return make(h), make(kv), make(kv)


def _text_mask(t, real, left):
  """int [B, T]: `real[i]` real tokens per row, left- or right-padded."""
  slots = np.arange(t)[None]
  n = np.asarray(real)[:, None]
  return jnp.asarray((slots >= t - n) if left else (slots < n), jnp.int32)


def _vision_ids(b, p, rng):
  """int [B, P]: a few images (contiguous runs) per row, then -1 padding."""
  ids = np.full((b, p), -1, np.int32)
  for row in range(b):
    cut = np.sort(rng.choice(np.arange(1, p - 8), 2, replace=False))
    ids[row, :cut[0]] = 0
    ids[row, cut[0]:cut[1]] = 1
    ids[row, cut[1]:p - 8 * row] = 2
  return jnp.asarray(ids)


def _loss(fn):
  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(jnp.sin(out.astype(jnp.float32))), out
  return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))


class SplashTest(absltest.TestCase):
  """Segments under splash equal layers.attention on the dense mask."""

  def _check(self, q, k, v, segments, atol=2e-5):
    dense = segments.visible()
    (l1, ref), g1 = _loss(lambda *a: layers.attention(*a, dense))(q, k, v)
    (l2, out), g2 = _loss(lambda *a: attention.attend(*a, segments))(q, k, v)
    np.testing.assert_allclose(out, ref, atol=atol)
    np.testing.assert_allclose(l2, l1, rtol=1e-5, atol=atol)
    for a, b in zip(g2, g1):
      np.testing.assert_allclose(a, b, atol=atol)
    return out

  def test_causal_text_gqa_left_and_right_padding(self):
    # 150 tokens: padded to 256 inside the kernel; 4 query heads on 2 kv heads.
    q, k, v = _qkv(0, 3, 150, 4, 2, 16)
    for left in (True, False):
      mask = _text_mask(150, [150, 97, 0], left)  # row 2 is all padding
      seg = attention.causal_text(mask, "splash")
      out = self._check(q, k, v, seg)
      np.testing.assert_array_equal(out[2], 0.0)

  def test_bidirectional_image_segments(self):
    q, k, v = _qkv(1, 2, 136, 2, 2, 8)
    ids = _vision_ids(2, 136, np.random.default_rng(1))
    out = self._check(q, k, v, attention.within_segments(ids, "splash"))
    np.testing.assert_array_equal(out[1, -8:], 0.0)  # padding rows

  def test_bf16(self):
    q, k, v = _qkv(2, 2, 128, 4, 1, 32, jnp.bfloat16)
    seg = attention.causal_text(_text_mask(128, [128, 60], True), "splash")
    out = attention.attend(q, k, v, seg)
    ref = layers.attention(q, k, v, seg.visible())
    self.assertEqual(out.dtype, jnp.bfloat16)
    np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32),
                               atol=3e-2)

  def test_qwen2_5_vl_window_and_full_blocks(self):
    # Two images, 8x12 and 4x4 patches (windows of 4x4 patches here: partial
    # windows at the edges), 8 padding rows: window ids from patch_layout.
    vision = presets.VisionConfig(window_size=56)
    layout = patch_layout([(1, 8, 12), (1, 4, 4)], vision)
    n = layout["image"].size
    pad = lambda x: np.pad(x, (0, 8), constant_values=-1)[None]
    image, window = jnp.asarray(pad(layout["image"])), jnp.asarray(
        pad(layout["window"]))
    xla = qwen2_5_vision.attention_masks(image, window)
    kernel = qwen2_5_vision.attention_masks(image, window, "splash")
    for dense, seg in zip(xla, kernel):  # the kernels' ids mean the same
      np.testing.assert_array_equal(seg.visible(), dense)
    self.assertLess(int(xla[0].sum()), int(xla[1].sum()))  # windows are smaller
    q, k, v = _qkv(3, 1, n + 8, 2, 2, 8)
    for is_full in (False, True):
      seg = jax.tree.map(lambda f, w: jnp.where(is_full, f, w), *kernel[::-1])
      self._check(q, k, v, seg)

  def test_runs_per_shard_under_a_mesh(self):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    q, k, v = _qkv(4, 4, 128, 4, 2, 8)
    seg = attention.causal_text(_text_mask(128, [128, 100, 7, 64], True),
                                "splash")
    fn = jax.jit(attention.attend)
    with jax.set_mesh(mesh):
      self.assertIn("shard_map", str(jax.make_jaxpr(fn)(q, k, v, seg)))
      out = fn(q, k, v, seg)
    np.testing.assert_allclose(out, layers.attention(q, k, v, seg.visible()),
                               atol=2e-5)


class CudnnPathTest(absltest.TestCase):
  """The cuDNN path's own logic, with the platform check forced to GPU and
  jax.nn.dot_product_attention's XLA implementation standing in for cuDNN."""

  def setUp(self):
    super().setUp()
    self.calls = []

    def stand_in(*args, **kwargs):
      self.assertEqual(kwargs.pop("implementation"), "cudnn")
      self.calls.append(kwargs)
      return jax.nn.dot_product_attention(*args, implementation="xla", **kwargs)

    for target, new in (("_platform", lambda: "gpu"),
                        ("_dot_product_attention", stand_in)):
      patcher = mock.patch.object(attention, target, new)
      patcher.start()
      self.addCleanup(patcher.stop)

  def _check(self, q, k, v, segments, atol=2e-2):
    dense = segments.visible()
    (_, ref), g1 = _loss(lambda *a: layers.attention(*a, dense))(q, k, v)
    (_, out), g2 = _loss(lambda *a: attention.attend(*a, segments))(q, k, v)
    f32 = lambda x: np.asarray(x.astype(jnp.float32))
    np.testing.assert_allclose(f32(out), f32(ref), atol=atol)
    for a, b in zip(g2, g1):
      np.testing.assert_allclose(f32(a), f32(b), atol=atol * 4)
    return out

  def test_resolve_by_platform(self):
    self.assertEqual(attention.resolve("auto"), "cudnn")
    self.assertEqual(attention._resolve("auto", "tpu"), "splash")
    self.assertEqual(attention._resolve("auto", "cpu"), "xla")
    self.assertEqual(attention._resolve("cudnn", "cpu"), "xla")
    with self.assertRaisesRegex(ValueError, "auto, xla, cudnn, splash"):
      attention.resolve("flash")
    with self.assertRaisesRegex(ValueError, "config.model.attention"):
      presets.tiny().replace(attention="flash")

  def test_causal_text_rotates_to_lengths_without_a_mask(self):
    q, k, v = _qkv(5, 3, 40, 4, 2, 16, jnp.bfloat16)
    for left in (True, False):
      self.calls.clear()
      seg = attention.causal_text(_text_mask(40, [40, 23, 0], left), "cudnn")
      out = self._check(q, k, v, seg)
      np.testing.assert_array_equal(np.asarray(out[2], np.float32), 0.0)
      self.calls.clear()
      attention.attend(q, k, v, seg)  # outside jit: the lengths are values
      call = self.calls[0]
      self.assertTrue(call["is_causal"])
      self.assertNotIn("mask", call)
      np.testing.assert_array_equal(call["query_seq_lengths"], [40, 23, 1])

  def test_segments_go_in_as_a_mask(self):
    q, k, v = _qkv(6, 2, 136, 2, 2, 8, jnp.bfloat16)
    ids = _vision_ids(2, 136, np.random.default_rng(6))
    self._check(q, k, v, attention.within_segments(ids, "cudnn"))
    call = self.calls[0]
    self.assertFalse(call["is_causal"])
    self.assertEqual(call["mask"].shape, (2, 1, 136, 136))

  def test_falls_back_to_xla_with_the_reason(self):
    cases = [
        (_qkv(7, 1, 16, 2, 2, 16, jnp.float32), "bf16 or fp16"),
        (_qkv(7, 1, 16, 2, 2, 12, jnp.bfloat16), "head_dim 12"),
        (_qkv(7, 1, 17, 2, 2, 16, jnp.bfloat16), "odd length 17"),
    ]
    for (q, k, v), reason in cases:
      ids = jnp.zeros(q.shape[:2], jnp.int32).at[:, -1].set(1)
      seg = attention.within_segments(ids, "cudnn")
      with self.assertLogs(level="WARNING") as logs:
        out = attention.attend(q, k, v, seg)
      self.assertIn(reason, "\n".join(logs.output))
      np.testing.assert_array_equal(out, layers.attention(q, k, v,
                                                          seg.visible()))
    self.assertEqual(self.calls, [])

  def test_decode_keeps_the_cache_attention(self):
    cfg = presets.tiny().replace(attention="cudnn", dtype="bfloat16")
    params = vlm.init_params(cfg, jax.random.key(0))
    batch = synthetic.random_batch(cfg, 2, 32, images=1, image_side=56)
    inputs = jax.tree.map(jnp.asarray, batch.inputs)
    # Tracing is enough: the stand-in records each call as it is traced.
    cache = jax.eval_shape(lambda p, x: vlm.prefill(p, cfg, x, 40), params,
                           inputs)[1]
    prefill_calls = len(self.calls)
    self.assertGreater(prefill_calls, 0)  # vision blocks and text layers
    jax.eval_shape(lambda p, t, c: vlm.decode_step(p, cfg, t, c), params,
                   inputs.tokens[:, -1], cache)
    self.assertLen(self.calls, prefill_calls)


def _model_inputs(config, side):
  batch = synthetic.random_batch(config, 2, 64, images=1, image_side=side)
  return jax.tree.map(jnp.asarray, batch.inputs)


class ModelTest(absltest.TestCase):
  """Both tiny families: splash logits, gradients and prefill equal xla's."""

  def _compare(self, preset, side):
    # remat: splash's custom VJP inside recomputed blocks, as bench_train runs.
    config = presets.get_preset(preset, remat=True)
    params = vlm.init_params(config, jax.random.key(0))
    inputs = _model_inputs(config, side)
    # Left-padded, as prompts are for prefill (kernels saw right padding above).
    inputs = inputs.replace(mask=jnp.flip(inputs.mask, 1))
    real = np.asarray(inputs.mask)[..., None] != 0

    def loss(params, config):
      logits = vlm.forward(params, config, inputs)
      picked = jnp.where(real, jax.nn.log_softmax(logits), 0)[..., :8]
      return jnp.sum(picked), logits

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (l_xla, logits), g_xla = grad(params, config.replace(attention="xla"))
    splash = config.replace(attention="splash")
    (l_splash, _), g_splash = grad(params, splash)
    np.testing.assert_allclose(l_splash, l_xla, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_splash),
                            jax.tree.leaves(g_xla)):
      scale = float(np.abs(b).max()) or 1.0
      np.testing.assert_allclose(a, b, atol=1e-5 * scale,
                                 err_msg=jax.tree_util.keystr(path))
    last, _ = jax.jit(vlm.prefill, static_argnums=(1, 3))(params, splash,
                                                          inputs, 64)
    np.testing.assert_allclose(last, logits[:, -1], atol=1e-4)

  def test_qwen2_5_vl_tiny(self):
    self._compare("tiny", 56)

  def test_qwen3_vl_tiny(self):
    self._compare("qwen3_vl_tiny", 64)


class GpuBenchmarksScriptTest(absltest.TestCase):

  def test_dry_run_lists_the_four_benchmarks(self):
    script = os.path.join(REPO, "evejax", "tools", "gpu_benchmarks.sh")
    out = subprocess.run(["bash", script, "--dry_run"], capture_output=True,
                         text=True, check=True, timeout=60,
                         env={**os.environ, "OUT": ""}).stdout
    lines = [l for l in out.splitlines() if "-m evejax.tools." in l]
    self.assertTrue(all(l.lstrip().startswith("timeout ") for l in lines), out)
    joined = "\n".join(lines)
    self.assertIn("bench_sampler --roofline --compare_scan", joined)
    for impl in ("xla", "cudnn"):
      self.assertRegex(joined, rf"bench_train .*--preset qwen2_5_vl_3b.*"
                       rf"--seq 2048.*--attention {impl}")
    self.assertIn("bench_sandbox", joined)
    self.assertLen(lines, 4)


if __name__ == "__main__":
  absltest.main()
