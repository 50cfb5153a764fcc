"""Sampling and training a tiny Qwen3-VL through the family-agnostic interfaces.

The `Sampler`, `Learner` and `rollouts.train_batch` get a Qwen3-VL config and
never branch on the family: the sampling checks every family passes
(`testing_hf.SamplingChecks`: greedy tokens equal transformers' `generate`,
with and without images; sampled log-probs equal the learner's scoring path;
an 8-device mesh and the scanned layout sample what one device and the
unrolled layout do), and one GRPO step moves every part of the model,
DeepStack mergers included.
"""

from absl.testing import absltest
import jax
import numpy as np

from evejax.rl import learner as learner_lib
import testing_hf


class Qwen3VLSamplingTest(testing_hf.SamplingChecks, absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.set_up_sampling("qwen3_vl", tie=False)

  def test_one_grpo_step_moves_every_part(self):
    cfg = learner_lib.default_train_config()
    cfg.optimizer.lr = 1e-3
    learner = learner_lib.Learner(self.config, cfg, self.params)
    metrics = learner.step(learner.algorithm.name, self.grpo_batch())
    self.assertTrue(all(np.isfinite(v) for v in metrics.values()), metrics)
    self.assert_moved(self.params, jax.device_get(learner.params), (
        ("vision", "pos_embed"), ("vision", "deepstack_merger"), ("vision", "blocks"),
        ("text", "layers"), ("text", "lm_head")))


if __name__ == "__main__":
  absltest.main()
