"""The unrolled decode path (`vlm.inference_params`) against the scanned one.

Sampling converts the params once to one array per decoder layer in the
compute dtype; prefill and decode_step then run the layers unrolled. These
tests pin that this is a change of layout only: the same logits (fp32, 1e-5)
as the scanned params, the same greedy and sampled tokens from the `Sampler`,
on one device and on an 8-device mesh.
"""

import dataclasses

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from evejax import parallel
from evejax import sampling
from evejax.models import vlm
from evejax.models.presets import tiny
from evejax.processing import batching
from evejax.processing import images


def _config(dtype="float32"):
  base = tiny()
  # Three layers (more than tiny's two) and an untied lm head: both layouts
  # of every kind of text weight.
  return base.replace(dtype=dtype, text=dataclasses.replace(
      base.text, num_layers=3, tie_word_embeddings=False))


def _params(config):
  params = jax.jit(vlm.init_params, static_argnums=0)(config, jax.random.key(1))
  # 2x the default init: logits of std ~1 (not all near 0), varied greedy
  # paths; fp32 differences of the two layouts stay ~2e-6.
  return jax.tree.map(lambda x: x * 2, params)


def _prompts(config):
  """Text-only prompts of several lengths and one with an image."""
  rng = np.random.default_rng(0)
  patches, grid = images.preprocess_image(
      rng.integers(0, 256, (56, 84, 3), dtype=np.uint8))
  image = ([config.vision_start_token_id]
           + [config.image_token_id] * images.num_image_tokens(grid)
           + [config.vision_end_token_id])
  return [batching.Example(tokens=np.asarray([1, 40, 41, 42], np.int32)),
          batching.Example(tokens=np.asarray([1, 50] + image + [51], np.int32),
                           images=[(patches, grid)]),
          batching.Example(tokens=np.arange(20, 40, dtype=np.int32)),
          batching.Example(tokens=np.asarray([1, 70], np.int32))]


class InferenceParamsTest(absltest.TestCase):

  def test_layout_dtype_and_pass_through(self):
    config = _config("bfloat16")
    params = _params(config)
    fast = vlm.inference_params(params, config)
    n = config.text.num_layers
    self.assertNotIn("layers", fast["text"])
    self.assertEqual([k for k in fast["text"] if k.startswith("layers_")],
                     [f"layers_{i}" for i in range(n)])
    for i in range(n):
      np.testing.assert_array_equal(
          np.asarray(fast["text"][f"layers_{i}"]["mlp"]["up"]["kernel"],
                     np.float32),
          np.asarray(params["text"]["layers"]["mlp"]["up"]["kernel"][i]
                     .astype(jnp.bfloat16), np.float32))
    dtypes = {x.dtype for x in jax.tree.leaves(fast["text"])}
    self.assertEqual(dtypes, {jnp.dtype(jnp.bfloat16)})
    # The vision tower is used once per prompt: passed through, not copied.
    for a, b in zip(jax.tree.leaves(fast["vision"]),
                    jax.tree.leaves(params["vision"])):
      self.assertIs(a, b)
    # Axis names describe the same tree; the text has no 'layers' axis left.
    axes = vlm.inference_param_axes(config)
    is_axes = lambda x: isinstance(x, tuple)
    self.assertEqual(jax.tree.structure(axes, is_leaf=is_axes),
                     jax.tree.structure(fast))
    for x, a in zip(jax.tree.leaves(fast),
                    jax.tree.leaves(axes, is_leaf=is_axes)):
      self.assertLen(a, x.ndim)
    for a in jax.tree.leaves(axes["text"], is_leaf=is_axes):
      self.assertNotIn("layers", a)
    # Converting twice changes nothing.
    again = vlm.inference_params(fast, config)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(fast)):
      self.assertIs(a, b)


class UnrolledEqualsScannedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = _config()
    cls.params = _params(cls.config)
    cls.fast = vlm.inference_params(cls.params, cls.config)
    cls.prompts = _prompts(cls.config)

  def test_prefill_and_decode_step_logits(self):
    c = self.config
    inputs = batching.make_batch(
        self.prompts, vision=c.vision, image_token_id=c.image_token_id,
        vision_start_id=c.vision_start_token_id, pad_id=0,
        length_buckets=(32,), patch_buckets=(32,), padding="left")
    inputs = jax.tree.map(jnp.asarray, inputs)
    prefill = jax.jit(vlm.prefill, static_argnums=(1, 3))
    decode = jax.jit(vlm.decode_step, static_argnums=1)
    scan_logits, scan_cache = prefill(self.params, c, inputs, 40)
    fast_logits, fast_cache = prefill(self.fast, c, inputs, 40)
    np.testing.assert_allclose(fast_logits, scan_logits, atol=1e-5, rtol=0)
    tokens = np.random.default_rng(0).integers(8, 90, (5, 4)).astype(np.int32)
    for step, tok in enumerate(tokens):
      scan_logits, scan_cache = decode(self.params, c, tok, scan_cache)
      fast_logits, fast_cache = decode(self.fast, c, tok, fast_cache)
      np.testing.assert_allclose(fast_logits, scan_logits, atol=1e-5, rtol=0,
                                 err_msg=f"step {step}")
    self.assertGreater(float(jnp.std(scan_logits)), 0.5)  # not degenerate
    for a, b in zip(jax.tree.leaves(fast_cache), jax.tree.leaves(scan_cache)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    self.assertEqual(int(fast_cache.index), 32 + len(tokens))

  def test_sampler_tokens_single_device_and_mesh(self):
    kw = dict(length_buckets=(32,), patch_buckets=(0, 32), batch_buckets=(4,),
              max_cache=48)
    greedy = sampling.SamplingParams(max_new_tokens=10, greedy=True)
    sampled = sampling.SamplingParams(max_new_tokens=10, group_size=2)
    scanned = sampling.Sampler(self.config, unroll_layers=False, **kw)
    unrolled = sampling.Sampler(self.config, **kw)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # On the mesh also in stages (the cache grows from 4 to 10 new tokens).
    sharded = sampling.Sampler(self.config, mesh=mesh, first_stage_tokens=4,
                               **kw)
    for sp in (greedy, sampled):
      want = scanned.generate(self.params, self.prompts, sp, seed=3)
      for s in (unrolled, sharded):
        got = s.generate(self.params, self.prompts, sp, seed=3)
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
    self.assertGreater(len(np.unique(want.tokens)), 10)  # varied paths

    # The converted params on the mesh are sharded by their axis names:
    # like the stacked params, minus the 'layers' axis.
    fast = sharded._inference_params(self.params)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          fast)
    want_shardings = parallel.shardings_for(
        vlm.inference_param_axes(self.config), mesh, sharded.rules, shapes)
    for x, s in zip(jax.tree.leaves(fast), jax.tree.leaves(want_shardings)):
      self.assertTrue(x.sharding.is_equivalent_to(s, x.ndim),
                      (x.shape, x.sharding, s))
    self.assertTrue(any(not s.is_fully_replicated
                        for s in jax.tree.leaves(want_shardings)))


if __name__ == "__main__":
  absltest.main()
