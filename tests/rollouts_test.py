"""Rollout rows -> TrainBatch: alignment of targets, loss mask and old log-probs."""
import numpy as np
from absl.testing import absltest

import jax

from evejax.models import presets
from evejax.models import vlm
from evejax.processing import batching
from evejax.rl import learner as learner_lib
from evejax.rl import rollouts
from evejax.sampling import Sampler
from evejax.sampling import SamplingParams

CFG = presets.get_preset("tiny")


def _prompt(rng, n_text, with_image=True):
  images = []
  toks = []
  if with_image:
    images = [(rng.normal(size=(16, 1176)).astype(np.float32), (1, 4, 4))]
    toks = [CFG.vision_start_token_id] + [CFG.image_token_id] * 4 + [CFG.vision_end_token_id]
  toks = np.asarray(toks + list(rng.integers(10, 2000, n_text)), np.int32)
  return batching.Example(tokens=toks, images=images)


class TrainBatchTest(absltest.TestCase):

  def test_alignment_by_hand(self):
    rng = np.random.default_rng(0)
    prompts = [_prompt(rng, 5), _prompt(rng, 9, with_image=False)]
    completions = [np.array([11, 12, 13]), np.array([21])]
    logps = [np.array([-0.1, -0.2, -0.3]), np.array([-0.4])]
    b = rollouts.train_batch(prompts, completions, model_config=CFG, pad_id=0,
                             length_buckets=(32,), patch_buckets=(16,), row_multiple=4,
                             sampler_logp=logps, advantages=[1.0, -1.0])
    self.assertEqual(b.targets.shape, (4, 32))   # rows rounded up to 4
    for i, (p, c, lp) in enumerate(zip(prompts, completions, logps)):
      n = len(p.tokens)
      # Position t predicts token t + 1: the first completion token is the
      # target at n - 1, and nothing before it carries loss.
      np.testing.assert_array_equal(b.targets[i, n - 1:n - 1 + len(c)], c)
      self.assertEqual(b.loss_mask[i].sum(), len(c))
      np.testing.assert_array_equal(np.nonzero(b.loss_mask[i])[0], np.arange(n - 1, n - 1 + len(c)))
      np.testing.assert_allclose(b.old_logp[i, n - 1:n - 1 + len(c)], lp)
      self.assertAlmostEqual(float(np.abs(b.old_logp[i]).sum()), float(np.abs(lp).sum()), places=5)
    np.testing.assert_array_equal(b.loss_mask[2:], 0)      # filler rows
    np.testing.assert_array_equal(b.advantages, [1.0, -1.0, 0.0, 0.0])

  def test_sampled_image_token_is_silenced_not_a_crash(self):
    rng = np.random.default_rng(2)
    prompts = [_prompt(rng, 5), _prompt(rng, 5)]
    completions = [np.array([11, CFG.image_token_id, 13]), np.array([21, 22])]
    b = rollouts.train_batch(prompts, completions, model_config=CFG, pad_id=0,
                             length_buckets=(32,), patch_buckets=(16,))
    self.assertEqual(b.loss_mask[0].sum(), 0)
    self.assertEqual(b.loss_mask[1].sum(), 2)
    self.assertNotIn(CFG.image_token_id, b.inputs.tokens[0, len(prompts[0].tokens):])
    self.assertTrue(rollouts.has_vision_tokens(CFG, completions[0]))

  def test_sampler_logprobs_equal_learner_scores(self):
    """Sampled tokens scored by the learner give the sampler's own log-probs."""
    rng = np.random.default_rng(1)
    params = vlm.init_params(CFG, jax.random.PRNGKey(3))
    prompts = [_prompt(rng, 7), _prompt(rng, 4)]
    sampler = Sampler(CFG, length_buckets=(32,), patch_buckets=(16,), batch_buckets=(2,),
                      max_cache=48)
    out = sampler.generate(params, prompts, SamplingParams(max_new_tokens=6, group_size=2), seed=5)
    toks, lps = rollouts.completions_from_samples(out)
    rows = [prompts[i] for i in out.prompt_index]
    b = rollouts.train_batch(rows, toks, model_config=CFG, pad_id=0, length_buckets=(48,),
                             patch_buckets=(16,), sampler_logp=lps)
    cfg = learner_lib.default_train_config()
    cfg.loss.kl_coef = 0.0
    learner = learner_lib.Learner(CFG, cfg, params)
    scored = np.asarray(learner.score(learner.params, b))
    m = b.loss_mask > 0
    self.assertEqual(m.sum(), sum(len(t) for t in toks))
    np.testing.assert_allclose(scored[m], b.old_logp[m], atol=1e-4)


if __name__ == "__main__":
  absltest.main()
