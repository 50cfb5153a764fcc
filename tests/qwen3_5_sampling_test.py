"""Sampling and training a tiny Qwen3.5 through the family-agnostic interfaces.

The `Sampler` carries Qwen3.5's hybrid cache (KV for attention layers, conv
window and recurrent state for DeltaNet layers) through its one interface and
passes every family's sampling checks (`testing_hf.SamplingChecks`: greedy
tokens equal transformers' `generate`, with and without images, left padded;
sampled log-probs equal the learner's scoring path; an 8-device mesh and the
scanned layout sample what one device and the unrolled layout do); one GRPO
step moves every part of the model, and one LoRA step on the
DeltaNet and attention projections trains the adapter that then samples.
"""
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from evejax import sampling
from evejax.models import lora
from evejax.rl import learner as learner_lib
import testing_hf

N = testing_hf.SamplingChecks.NEW_TOKENS
# XLA's backend optimisations off for the learner's programs: compiles
# dominate this file's time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


class Qwen3_5SamplingTest(testing_hf.SamplingChecks, absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.set_up_sampling("qwen3_5", num_layers=4, full_attention_interval=2)

  def test_one_grpo_step_moves_every_part(self):
    cfg = learner_lib.default_train_config()
    cfg.optimizer.lr = 1e-3
    cfg.loss.kl_coef = 0.0  # no reference model: one program fewer to compile
    learner = learner_lib.Learner(self.config, cfg, self.params,
                                  compiler_options=FAST_COMPILE)
    metrics = learner.step(learner.algorithm.name, self.grpo_batch())
    self.assertTrue(all(np.isfinite(v) for v in metrics.values()), metrics)
    after = jax.device_get(learner.params)
    layers = ("text", "layers")
    self.assert_moved(self.params, after, (
        ("vision", "pos_embed"), ("vision", "blocks"), layers + ("linear_0", "in_qkv"),
        layers + ("linear_0", "A_log"), layers + ("linear_0", "conv_weight"),
        layers + ("linear_0", "norm"), layers + ("full_0", "q"), ("text", "lm_head")))
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
    metrics = learner.step(learner.algorithm.name, self.grpo_batch())
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
