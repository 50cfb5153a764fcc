"""Sampling and training a tiny Qwen3.5 through the family-agnostic interfaces.

The `Sampler` carries Qwen3.5's hybrid cache (KV for attention layers, conv
window and recurrent state for DeltaNet layers) through its one interface:
greedy tokens equal transformers' `generate`, with and without images, left
padded; sampled log-probs equal the learner's scoring path; an 8-device mesh
and the scanned layout sample what one device and the unrolled layout do;
one GRPO step moves every part of the model, and one LoRA step on the
DeltaNet and attention projections trains the adapter that then samples.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + _FLAG

from absl.testing import absltest  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from evejax import parallel  # noqa: E402
from evejax import sampling  # noqa: E402
from evejax.models import hf  # noqa: E402
from evejax.models import lora  # noqa: E402
from evejax.processing import batching  # noqa: E402
from evejax.rl import learner as learner_lib  # noqa: E402
from evejax.rl import rollouts  # noqa: E402
import testing_hf  # noqa: E402

N = 8  # new tokens per completion
# XLA's backend optimisations off for the learner's programs: compiles
# dominate this file's time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


class Qwen3_5SamplingTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ckpt = testing_hf.TinyCheckpoint(family="qwen3_5", seed=5, num_layers=4,
                                         full_attention_interval=2)
    cls.config = cls.ckpt.config
    cls.params = hf.load_params(cls.ckpt.dir, cls.config)
    # Two prompts with images (one with two of different sizes), two without.
    cls.hf_examples = testing_hf.build_examples(
        cls.config, [[3, (64, 96), 2], [5], [2, (96, 64), 1, (32, 64), 2], [7]],
        seed=6)
    cls.prompts = [testing_hf.as_example(e) for e in cls.hf_examples]
    cls.kw = dict(length_buckets=(32,), patch_buckets=(0, 64),
                  batch_buckets=(4,), max_cache=48)
    cls.sampler = sampling.Sampler(cls.config, **cls.kw)
    cls.sp = sampling.SamplingParams(max_new_tokens=N, group_size=2)
    cls.sampled = cls.sampler.generate(cls.params, cls.prompts, cls.sp, seed=3)

  @classmethod
  def tearDownClass(cls):
    cls.ckpt.cleanup()
    super().tearDownClass()

  def test_greedy_matches_transformers_generate(self):
    ref = testing_hf.hf_greedy(self.ckpt.model, self.config, self.prompts, N)
    sp = sampling.SamplingParams(max_new_tokens=N, greedy=True)
    out = self.sampler.generate(self.params, self.prompts, sp, seed=0)
    np.testing.assert_array_equal(out.tokens, ref)
    self.assertGreater(len(np.unique(ref)), 4)  # varied paths, not one token
    # A batch without any image (transformers' text-only path).
    text = [p for p in self.prompts if not p.images]
    ref = testing_hf.hf_greedy(self.ckpt.model, self.config, text, N)
    out = self.sampler.generate(self.params, text, sp, seed=0)
    np.testing.assert_array_equal(out.tokens, ref)

  def test_logprobs_match_the_learner_scoring_path(self):
    out = self.sampled
    full = [batching.Example(
        tokens=np.concatenate([self.prompts[p].tokens, t]),
        images=self.prompts[p].images)
            for p, t in zip(out.prompt_index, out.tokens)]
    c = self.config
    inputs = batching.make_batch(
        full, vision=c.vision, image_token_id=c.image_token_id,
        vision_start_id=c.vision_start_token_id, pad_id=0,
        length_buckets=(48,), patch_buckets=(64,), padding="right")
    targets = np.zeros_like(inputs.tokens)
    targets[:, :-1] = inputs.tokens[:, 1:]
    lp = np.asarray(jax.jit(learner_lib.token_logprobs, static_argnums=1)(
        self.params, c, jax.tree.map(jnp.asarray, inputs), jnp.asarray(targets)))
    want = np.stack([lp[r, ex.num_tokens - N - 1:ex.num_tokens - 1]
                     for r, ex in enumerate(full)])
    np.testing.assert_allclose(out.logprobs, want, atol=1e-4, rtol=0)
    self.assertGreater(np.abs(want).mean(), 0.5)  # not all near-certain

  def test_mesh_and_scanned_layout_sample_the_same(self):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # A first cache stage of 4 new tokens: the KV leaves grow, the DeltaNet
    # state does not.
    sharded = sampling.Sampler(self.config, mesh=mesh, first_stage_tokens=4,
                               **self.kw)
    scanned = sampling.Sampler(self.config, unroll_layers=False, **self.kw)
    for other in (sharded, scanned):
      out = other.generate(self.params, self.prompts, self.sp, seed=3)
      np.testing.assert_array_equal(out.tokens, self.sampled.tokens)
      np.testing.assert_allclose(out.logprobs, self.sampled.logprobs, atol=1e-5)

  def _batch(self):
    out = self.sampled
    prompts = [self.prompts[p] for p in out.prompt_index]
    completions = [t[:n] for t, n in zip(out.tokens, out.lengths)]
    return rollouts.train_batch(
        prompts, completions, model_config=self.config, pad_id=0,
        length_buckets=(48,), patch_buckets=(64,),
        sampler_logp=[lp[:n] for lp, n in zip(out.logprobs, out.lengths)],
        advantages=np.random.default_rng(0).standard_normal(len(prompts)))

  def test_one_grpo_step_moves_every_part(self):
    cfg = learner_lib.default_train_config()
    cfg.optimizer.lr = 1e-3
    cfg.loss.kl_coef = 0.0  # no reference model: one program fewer to compile
    learner = learner_lib.Learner(self.config, cfg, self.params,
                                  compiler_options=FAST_COMPILE)
    metrics = learner.step(learner.algorithm.name, self._batch())
    self.assertTrue(all(np.isfinite(v) for v in metrics.values()), metrics)
    after = jax.device_get(learner.params)
    layers = ("text", "layers")
    for part in (("vision", "pos_embed"), ("vision", "blocks"),
                 layers + ("linear_0", "in_qkv"), layers + ("linear_0", "A_log"),
                 layers + ("linear_0", "conv_weight"),
                 layers + ("linear_0", "norm"), layers + ("full_0", "q"),
                 ("text", "lm_head")):
      a, b = self.params, after
      for k in part:
        a, b = a[k], b[k]
      moved = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
      self.assertGreater(moved, 1e-5, "/".join(part))
    self.assertEqual(after["text"]["layers"]["linear_0"]["A_log"].dtype,
                     jnp.float32)

  def test_one_lora_step_trains_an_adapter_that_samples(self):
    cfg = learner_lib.default_train_config()
    cfg.optimizer.lr = 1e-2
    cfg.loss.kl_coef = 0.0
    cfg.lora.update(rank=4, alpha=8.0, targets=(
        lora.TEXT_PROJECTIONS, lora.LINEAR_ATTENTION_PROJECTIONS))
    learner = learner_lib.Learner(self.config, cfg, self.params,
                                  compiler_options=FAST_COMPILE)
    metrics = learner.step(learner.algorithm.name, self._batch())
    self.assertTrue(all(np.isfinite(v) for v in metrics.values()), metrics)
    adapter = jax.device_get(learner.params)
    blocks = adapter["text"]["layers"]
    self.assertEqual(sorted(blocks["linear_0"]),
                     ["in_a", "in_b", "in_qkv", "in_z", "mlp", "out"])
    self.assertGreater(float(np.abs(blocks["linear_0"]["in_qkv"]["lora_b"]).max()), 0)
    # The adapter merged into the unrolled blocks samples like the adapted
    # scoring path scores.
    adapted = sampling.Sampler(self.config, model=lora.AdaptedModel(
        learner.lora), **self.kw)
    sp = sampling.SamplingParams(max_new_tokens=N, greedy=True)
    out = adapted.generate({"backbone": self.params, "adapter": adapter},
                           self.prompts, sp, seed=0)
    base = self.sampler.generate(self.params, self.prompts, sp, seed=0)
    self.assertFalse(np.array_equal(out.tokens, base.tokens))


if __name__ == "__main__":
  absltest.main()
