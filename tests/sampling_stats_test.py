"""Sampling statistics: empirical token frequencies match the intended law.

Draws are seeded, so each test is deterministic; a chi-square p-value above
1e-3 says the counts agree with the expected probabilities, and support
checks say that top-k / top-p never emit an excluded token.
"""
import dataclasses
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from evejax import sampling
from evejax.models import vlm
from evejax.models.presets import tiny
from evejax.processing import batching
from evejax.processing import images

DRAWS = 40_000


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def _draw(logits: np.ndarray, sp: sampling.SamplingParams, seed=0):
  """DRAWS samples from one row of logits, one key per draw."""
  batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32),
                           (DRAWS, logits.shape[-1]))
  keys = jax.random.split(jax.random.key(seed), DRAWS)
  fn = jax.jit(sampling.sample_tokens, static_argnums=2)
  tok, lp = fn(batch, keys, sp)
  return np.asarray(tok), np.asarray(lp)


def _chi2_pvalue(tokens, probs):
  """Goodness of fit; bins with tiny expected counts are pooled."""
  counts = np.bincount(tokens, minlength=probs.size).astype(np.float64)
  expected = probs / probs.sum() * tokens.size
  big = expected >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  return stats.chisquare(obs, exp).pvalue


class SamplingStatsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.logits = rng.normal(size=24).astype(np.float32) * 1.5

  def test_temperature_one_matches_softmax(self):
    sp = sampling.SamplingParams(max_new_tokens=1)
    tok, lp = _draw(self.logits, sp)
    probs = _softmax(self.logits.astype(np.float64))
    self.assertGreater(_chi2_pvalue(tok, probs), 1e-3)
    np.testing.assert_allclose(lp, np.log(probs[tok]), rtol=1e-5, atol=1e-6)

  def test_temperature_reshapes_distribution(self):
    sp = sampling.SamplingParams(max_new_tokens=1, temperature=0.5)
    tok, _ = _draw(self.logits, sp, seed=1)
    self.assertGreater(_chi2_pvalue(tok, _softmax(self.logits / 0.5)), 1e-3)
    # ... and is distinguishable from T = 1 (the test has power).
    self.assertLess(_chi2_pvalue(tok, _softmax(self.logits)), 1e-6)

  def test_top_k_support_and_renormalised_law(self):
    k = 5
    sp = sampling.SamplingParams(max_new_tokens=1, top_k=k)
    tok, _ = _draw(self.logits, sp, seed=2)
    allowed = np.argsort(-self.logits)[:k]
    self.assertTrue(np.isin(tok, allowed).all())
    probs = np.zeros_like(self.logits, np.float64)
    probs[allowed] = _softmax(self.logits[allowed].astype(np.float64))
    self.assertGreater(_chi2_pvalue(tok, probs), 1e-3)

  def test_top_p_support_and_renormalised_law(self):
    top_p = 0.6
    sp = sampling.SamplingParams(max_new_tokens=1, top_p=top_p, temperature=0.8)
    tok, _ = _draw(self.logits, sp, seed=3)
    full = _softmax(self.logits.astype(np.float64) / 0.8)
    order = np.argsort(-full)
    # Smallest prefix of the sorted probabilities whose mass reaches top_p.
    n_keep = int(np.searchsorted(np.cumsum(full[order]), top_p) + 1)
    allowed = order[:n_keep]
    self.assertLess(n_keep, 24)
    self.assertTrue(np.isin(tok, allowed).all())
    probs = np.zeros_like(full)
    probs[allowed] = full[allowed] / full[allowed].sum()
    self.assertGreater(_chi2_pvalue(tok, probs), 1e-3)
    # Every allowed token actually occurs (no over-truncation).
    self.assertEqual(set(np.unique(tok)), set(allowed.tolist()))

  def test_top_p_over_a_large_vocabulary_both_paths(self):
    # 2048 tokens: a peaked law whose nucleus lies in the top
    # TOP_P_CANDIDATES (drawn without a full sort), and a flat one whose
    # nucleus does not (the full sort runs). Same law either way.
    self.assertLess(sampling.select.TOP_P_CANDIDATES, 2048)
    rng = np.random.default_rng(2)
    for scale, seed in ((4.0, 7), (0.3, 8)):
      logits = (rng.normal(size=2048) * scale).astype(np.float32)
      full = _softmax(logits.astype(np.float64))
      order = np.argsort(-full)
      n_keep = int(np.searchsorted(np.cumsum(full[order]), 0.8) + 1)
      if scale > 1:
        self.assertLess(n_keep, sampling.select.TOP_P_CANDIDATES)
      else:
        self.assertGreater(n_keep, sampling.select.TOP_P_CANDIDATES)
      tok, lp = _draw(logits, sampling.SamplingParams(
          max_new_tokens=1, top_p=0.8, logprob_mode="sampling"), seed=seed)
      allowed = order[:n_keep]
      self.assertTrue(np.isin(tok, allowed).all(), msg=str(scale))
      kept = np.zeros_like(full)
      kept[allowed] = full[allowed] / full[allowed].sum()
      self.assertGreater(_chi2_pvalue(tok, kept), 1e-3, msg=str(scale))
      np.testing.assert_allclose(lp, np.log(kept[tok]), rtol=1e-4, atol=1e-5)

  def test_top_k_then_top_p(self):
    sp = sampling.SamplingParams(max_new_tokens=1, top_k=8, top_p=0.5)
    tok, _ = _draw(self.logits, sp, seed=4)
    top8 = np.argsort(-self.logits)[:8]
    renorm = _softmax(self.logits[top8].astype(np.float64))
    n_keep = int(np.searchsorted(np.cumsum(renorm), 0.5) + 1)
    self.assertEqual(set(np.unique(tok)), set(top8[:n_keep].tolist()))

  def test_two_level_draw_law_with_excluded_tokens(self):
    # 600 tokens draw in 24 blocks of 25: a block by its mass, then a token
    # in it. A third of the tokens are excluded (-inf) and never drawn.
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=600) * 1.5).astype(np.float32)
    logits[rng.permutation(600)[:200]] = -np.inf
    tok, lp = _draw(logits, sampling.SamplingParams(max_new_tokens=1), seed=6)
    probs = _softmax(logits.astype(np.float64))
    self.assertTrue(np.isfinite(logits[tok]).all())
    self.assertGreater(_chi2_pvalue(tok, probs), 1e-3)
    self.assertLess(_chi2_pvalue(tok, _softmax(logits / 1.2)), 1e-6)
    np.testing.assert_allclose(lp, np.log(probs[tok]), rtol=1e-5, atol=1e-6)

  def test_ties_at_the_cut_never_exceed_k(self):
    logits = np.array([2.0, 1.0, 1.0, 1.0, 0.0], np.float32)
    sp = sampling.SamplingParams(max_new_tokens=1, top_k=2)
    tok, _ = _draw(logits, sp, seed=5)
    self.assertLessEqual(len(np.unique(tok)), 2)
    self.assertIn(0, tok)


class ModelSamplingStatsTest(absltest.TestCase):
  """End to end: the Sampler's first tokens from the tiny VLM (one prompt with
  an image, G = 8192 completions sharing one prefill) follow softmax of the
  model's own scoring logits, and top-p keeps to the nucleus."""

  G = 8192

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    base = tiny()
    cls.config = base.replace(text=dataclasses.replace(
        base.text, tie_word_embeddings=False))
    params = vlm.init_params(cls.config, jax.random.key(0))
    # Sharpen the output layer so the law is far from uniform (logit std ~2).
    params["text"]["lm_head"]["kernel"] *= 8.0
    cls.params = params
    patches, grid = images.preprocess_image(
        np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8))
    c = cls.config
    tokens = np.array([1, 40, c.vision_start_token_id]
                      + [c.image_token_id] * images.num_image_tokens(grid)
                      + [c.vision_end_token_id, 41], np.int32)
    cls.example = batching.Example(tokens=tokens, images=[(patches, grid)])
    inputs = batching.make_batch(
        [cls.example], vision=c.vision, image_token_id=c.image_token_id,
        vision_start_id=c.vision_start_token_id, pad_id=0,
        length_buckets=(16,), patch_buckets=(16,))
    logits = vlm.forward(cls.params, c, jax.tree.map(jnp.asarray, inputs))
    cls.logits = np.asarray(logits[0, -1], np.float64)
    cls.sampler = sampling.Sampler(c, length_buckets=(16,), patch_buckets=(16,),
                                   batch_buckets=(1,), max_cache=17)

  def _first_tokens(self, **kw):
    sp = sampling.SamplingParams(max_new_tokens=1, group_size=self.G, **kw)
    out = self.sampler.generate(self.params, [self.example], sp, seed=11)
    return out.tokens[:, 0], out.logprobs[:, 0]

  def test_temperature_one_matches_softmax_of_scoring_logits(self):
    probs = _softmax(self.logits)
    self.assertGreater(probs.max(), 0.02)  # far from uniform (1/2048)
    tok, lp = self._first_tokens()
    self.assertGreater(_chi2_pvalue(tok, probs), 1e-3)
    # ... and tells it apart from a near law (temperature 1.25).
    self.assertLess(_chi2_pvalue(tok, _softmax(self.logits / 1.25)), 1e-6)
    np.testing.assert_allclose(lp, np.log(probs[tok]), atol=1e-4)

  def test_top_p_never_leaves_the_nucleus(self):
    probs = _softmax(self.logits)
    order = np.argsort(-probs)
    n_keep = int(np.searchsorted(np.cumsum(probs[order]), 0.7) + 1)
    tok, _ = self._first_tokens(top_p=0.7)
    self.assertTrue(np.isin(tok, order[:n_keep]).all())
    kept = np.zeros_like(probs)
    kept[order[:n_keep]] = probs[order[:n_keep]]
    self.assertGreater(_chi2_pvalue(tok, kept), 1e-3)


if __name__ == "__main__":
  absltest.main()
