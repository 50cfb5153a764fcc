"""Tests for evejax.sampling: the decode loop, group sampling, stops, errors.

Two models: a small stand-in (`_Fake`, same functional signatures as
evejax.models.vlm) makes the loop logic exact and cheap to test; the real
tiny VLM (with images) checks log-probs against the scoring path and that an
8-device mesh gives the same outputs as one device.
"""

import dataclasses
import tempfile

from absl.testing import absltest
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from evejax import parallel
from evejax import sampling
from evejax.models import hf
from evejax.models import vlm
from evejax.models.presets import tiny
from evejax.processing import batching
from evejax.processing import images

VOCAB = 64
DIM = 16


@flax.struct.dataclass
class _FakeCache:
  k: jax.Array         # [1, B, S, 1, D]
  v: jax.Array         # [1, B, S, 1, D]
  mask: jax.Array      # [B, S]
  index: jax.Array     # scalar
  position: jax.Array  # [B]


class _Fake:
  """Logits = (masked mean of cached embeddings) @ W + pos[position] + a
  bigram bonus `chain` on (previous token + 1) % V.

  Every cached entry, the mask, the write index and the position matter, so
  a loop that mishandles any of them gives different logits than `forward`.
  """

  @staticmethod
  def init_params(rng, chain=0.0):
    k1, k2, k3 = jax.random.split(rng, 3)
    return dict(emb=jax.random.normal(k1, (VOCAB, DIM)),
                out=jax.random.normal(k2, (DIM, VOCAB)),
                pos=jax.random.normal(k3, (512, VOCAB)) * 0.5,
                chain=jnp.float32(chain))

  @staticmethod
  def param_axes(config):
    del config
    return dict(emb=("vocab", "embed"), out=("embed", "vocab"),
                pos=(None, "vocab"), chain=())

  @staticmethod
  def cache_axes(config):
    del config
    kv = ("layers", "batch", "length", "kv_heads", "head_dim")
    return _FakeCache(k=kv, v=kv, mask=("batch", "length"), index=(),
                      position=("batch",))

  @staticmethod
  def _logits(params, summed, count, position, last):
    h = summed / jnp.maximum(count, 1)[:, None]
    return (h @ params["out"] + params["pos"][position]
            + params["chain"] * jax.nn.one_hot((last + 1) % VOCAB, VOCAB))

  @staticmethod
  def prefill(params, config, inputs, cache_size):
    del config
    b, t = inputs.tokens.shape
    e = params["emb"][inputs.tokens] * inputs.mask[..., None]
    k = jnp.zeros((1, b, cache_size, 1, DIM)).at[0, :, :t, 0].set(e)
    mask = jnp.zeros((b, cache_size), jnp.int32).at[:, :t].set(inputs.mask)
    position = jnp.max(inputs.positions, axis=(0, 2)) + 1
    cache = _FakeCache(k=k, v=k, mask=mask, index=jnp.int32(t),
                       position=position.astype(jnp.int32))
    logits = _Fake._logits(params, e.sum(1), inputs.mask.sum(1),
                           position, inputs.tokens[:, -1])
    return logits, cache

  @staticmethod
  def decode_step(params, config, tokens, cache):
    del config
    e = params["emb"][tokens]
    k = jax.lax.dynamic_update_slice(
        cache.k, e[None, :, None, None].astype(cache.k.dtype),
        (0, 0, cache.index, 0, 0))
    mask = jax.lax.dynamic_update_slice(
        cache.mask, jnp.ones((tokens.shape[0], 1), jnp.int32), (0, cache.index))
    position = cache.position + 1
    summed = (k[0, :, :, 0] * mask[..., None]).sum(1)
    logits = _Fake._logits(params, summed, mask.sum(1), position, tokens)
    return logits, cache.replace(k=k, v=k, mask=mask, index=cache.index + 1,
                                 position=position)

  @staticmethod
  @jax.jit
  def forward(params, tokens, mask):
    """Teacher-forced logits [B, T, V] of left-padded text sequences."""
    e = params["emb"][tokens] * mask[..., None]
    count = jnp.cumsum(mask, axis=1)
    h = jnp.cumsum(e, axis=1) / jnp.maximum(count, 1)[..., None]
    return (h @ params["out"] + params["pos"][count]
            + params["chain"] * jax.nn.one_hot((tokens + 1) % VOCAB, VOCAB))


def _left_pad(seqs, length):
  tokens = np.zeros((len(seqs), length), np.int32)
  mask = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    tokens[i, length - len(s):] = s
    mask[i, length - len(s):] = 1
  return tokens, mask


def _examples(prompts):
  return [batching.Example(tokens=np.asarray(p, np.int32)) for p in prompts]


def _fake_sampler(**kw):
  args = dict(length_buckets=(8, 16), patch_buckets=(0, 4),
              batch_buckets=(2, 4, 8), max_cache=48, model=_Fake)
  args.update(kw)
  return sampling.Sampler(tiny(), **args)


# Ids 0-6 are the tiny config's special tokens (5 = <|image_pad|>): avoided.
PROMPTS = [[13, 14, 15], [7], [19, 20, 21, 22, 23], [11, 12]]


class SampleTokensTest(absltest.TestCase):

  def test_greedy_is_argmax_and_logprob_is_tempered_log_softmax(self):
    logits = jax.random.normal(jax.random.key(0), (5, 11))
    sp = sampling.SamplingParams(max_new_tokens=1, greedy=True, temperature=2.0)
    tok, lp = sampling.sample_tokens(logits, jax.random.key(1), sp)
    np.testing.assert_array_equal(tok, np.argmax(logits, -1))
    want = jax.nn.log_softmax(logits / 2.0)[np.arange(5), tok]
    np.testing.assert_allclose(lp, want, rtol=1e-6)
    sp_raw = sp.replace(logprob_mode="raw")
    _, lp_raw = sampling.sample_tokens(logits, jax.random.key(1), sp_raw)
    np.testing.assert_allclose(
        lp_raw, jax.nn.log_softmax(logits)[np.arange(5), tok], rtol=1e-6)

  def test_per_row_keys_make_rows_independent_of_batch(self):
    logits = jax.random.normal(jax.random.key(0), (6, 50))
    keys = jax.random.split(jax.random.key(3), 6)
    sp = sampling.SamplingParams(max_new_tokens=1, top_k=10, top_p=0.9)
    tok, lp = sampling.sample_tokens(logits, keys, sp)
    tok2, lp2 = sampling.sample_tokens(logits[2:5], keys[2:5], sp)
    np.testing.assert_array_equal(tok[2:5], tok2)
    np.testing.assert_allclose(lp[2:5], lp2)

  def test_sampling_logprob_mode_is_log_prob_of_truncated_distribution(self):
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    sp = sampling.SamplingParams(max_new_tokens=1, top_k=2,
                                 logprob_mode="sampling")
    seen = set()
    for seed in range(8):
      tok, lp = sampling.sample_tokens(logits, jax.random.key(seed), sp)
      want = {0: np.log(0.5 / 0.8), 1: np.log(0.3 / 0.8)}[int(tok[0])]
      np.testing.assert_allclose(lp[0], want, rtol=1e-5)
      seen.add(int(tok[0]))
    self.assertEqual(seen, {0, 1})

  def test_blocked_argmax_is_first_index_of_the_max(self):
    # Vocabularies that block as 8 x 12 (96), 1 x 97 (prime) and 32 x 64;
    # ties put the max in several blocks and inside one block.
    rng = np.random.default_rng(0)
    for vocab in (96, 97, 2048):
      x = rng.integers(-3, 4, size=(64, vocab)).astype(np.float32)
      x[0, [5, 40, 90 % vocab]] = 10.0   # ties across blocks
      x[1, [2, 3]] = 10.0                # ties inside a block
      x[2, -1] = 10.0                    # the last entry
      np.testing.assert_array_equal(sampling.select.argmax(jnp.asarray(x)),
                                    np.argmax(x, -1), err_msg=str(vocab))

  def test_inverse_cdf_search_lands_only_on_positive_weights(self):
    w = jnp.array([[0.0, 0.0, 1.0, 0.0, 2.0, 0.0]] * 4)
    u = jnp.array([0.0, 1 / 3 - 1e-6, 1 / 3 + 1e-6, 1.0 - 1e-7])
    np.testing.assert_array_equal(sampling.select._search(w, u), [2, 2, 4, 4])
    # u = 1 cannot be drawn, but rounding of u * total can reach the top.
    np.testing.assert_array_equal(
        sampling.select._search(w[:1], jnp.array([1.0])), [4])

  def test_draw_returns_logsumexp_and_never_an_excluded_index(self):
    x = jax.random.normal(jax.random.key(0), (256, 96)) * 3
    x = x.at[:, ::2].set(-jnp.inf)  # every even index excluded
    keys = jax.random.split(jax.random.key(1), 256)
    idx, lse = sampling.select.draw(x, keys, 0.5)
    self.assertTrue(np.all(np.asarray(idx) % 2 == 1))
    np.testing.assert_allclose(lse, jax.nn.logsumexp(x * 0.5, axis=-1),
                               rtol=1e-6)

  def test_bad_params_name_the_field(self):
    with self.assertRaisesRegex(ValueError, "temperature"):
      sampling.SamplingParams(max_new_tokens=4, temperature=0.0)
    with self.assertRaisesRegex(ValueError, "top_p"):
      sampling.SamplingParams(max_new_tokens=4, top_p=0.0)
    with self.assertRaisesRegex(ValueError, "max_new_tokens"):
      sampling.SamplingParams(max_new_tokens=0)
    with self.assertRaisesRegex(ValueError, "stop_sequences"):
      sampling.SamplingParams(max_new_tokens=4, stop_sequences=[[]])
    with self.assertRaisesRegex(ValueError, "logprob_mode"):
      sampling.SamplingParams(max_new_tokens=4, logprob_mode="trainer")
    sp = sampling.SamplingParams(max_new_tokens=4, eos_ids=[1, 2],
                                 stop_sequences=[[3, 4]])
    self.assertEqual(hash(sp), hash(sp.replace()))


class FakeModelLoopTest(absltest.TestCase):
  """Loop logic against a teacher-forced reference."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = _Fake.init_params(jax.random.key(0))
    cls.sampler = _fake_sampler()

  def test_logprobs_match_teacher_forced_scoring(self):
    sp = sampling.SamplingParams(max_new_tokens=12, temperature=1.3, group_size=2)
    out = self.sampler.generate(self.params, _examples(PROMPTS), sp, seed=0)
    self.assertEqual(out.tokens.shape, (8, 12))
    np.testing.assert_array_equal(out.prompt_index, np.repeat(np.arange(4), 2))
    np.testing.assert_array_equal(out.lengths, 12)
    seqs = [PROMPTS[p] + list(t) for p, t in zip(out.prompt_index, out.tokens)]
    tokens, mask = _left_pad(seqs, 24)
    lp = jax.nn.log_softmax(_Fake.forward(self.params, tokens, mask) / 1.3)
    # Token at column c is scored by the logits at column c - 1.
    want = np.take_along_axis(np.asarray(lp[:, 11:23]),
                              tokens[:, 12:, None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, want, atol=1e-5)
    # Group members of one prompt differ (independent keys).
    self.assertFalse(np.array_equal(out.tokens[0], out.tokens[1]))

  def test_staged_cache_gives_the_same_outputs(self):
    # Token 20 as EOS ends some rows early, so later stages see finished rows.
    sp = sampling.SamplingParams(max_new_tokens=12, temperature=1.3,
                                 group_size=2, eos_ids=(20, 30))
    whole = self.sampler.generate(self.params, _examples(PROMPTS), sp, seed=1)
    staged = _fake_sampler(first_stage_tokens=2).generate(
        self.params, _examples(PROMPTS), sp, seed=1)  # stages end 2, 4, 8, 12
    self.assertTrue((whole.lengths < 12).any() and (whole.lengths > 8).any())
    np.testing.assert_array_equal(staged.tokens, whole.tokens)
    np.testing.assert_allclose(staged.logprobs, whole.logprobs, atol=1e-6)
    np.testing.assert_array_equal(staged.finish_reason, whole.finish_reason)
    self.assertEqual(sampling.stage_ends(12, 2), (2, 4, 8, 12))
    self.assertEqual(sampling.stage_ends(12, 0), (12,))

  def test_stats_count_kept_tokens_over_rows_times_steps(self):
    sp = sampling.SamplingParams(max_new_tokens=12, temperature=1.3,
                                 group_size=2, eos_ids=(20, 30))
    out = _fake_sampler(batch_buckets=(2,)).generate(
        self.params, _examples(PROMPTS), sp, seed=1)
    # Two chunks of 2 prompts x 2 rows; each runs until its longest row ends.
    longest = out.lengths.reshape(2, 4).max(axis=1)
    self.assertEqual(out.stats.decode_steps, longest.sum())
    self.assertEqual(out.stats.row_steps, 4 * longest.sum())
    self.assertEqual(out.stats.tokens, out.lengths.sum())
    self.assertLess(out.stats.occupancy, 1.0)
    self.assertEqual(out.stats.metrics()["sampling/occupancy"],
                     out.lengths.sum() / (4 * longest.sum()))

  def test_greedy_group_members_equal_and_match_step_by_step(self):
    sp = sampling.SamplingParams(max_new_tokens=6, greedy=True, group_size=3)
    out = self.sampler.generate(self.params, _examples(PROMPTS[:2]), sp, seed=0)
    for p, prompt in enumerate(PROMPTS[:2]):
      rows = out.tokens[3 * p:3 * p + 3]
      np.testing.assert_array_equal(rows, np.broadcast_to(rows[0], rows.shape))
      seq = list(prompt)  # reference: re-score the whole sequence each step
      for _ in range(6):
        tokens, mask = _left_pad([seq], 16)
        seq.append(int(jnp.argmax(_Fake.forward(self.params, tokens, mask)[0, -1])))
      np.testing.assert_array_equal(rows[0], seq[len(prompt):])

  def test_reproducible_across_buckets_chunks_and_calls_bounded_compiles(self):
    sp = sampling.SamplingParams(max_new_tokens=8, top_k=20, group_size=2)
    s = _fake_sampler()
    a = s.generate(self.params, _examples(PROMPTS), sp, seed=7)
    self.assertEqual(s.num_compiles, 2)  # prefill + decode
    # One batch bucket of 8 (4 filler rows) vs chunks of 2 prompts.
    b = _fake_sampler(batch_buckets=(8,)).generate(
        self.params, _examples(PROMPTS), sp, seed=7)
    chunked = _fake_sampler(batch_buckets=(2,))
    c = chunked.generate(self.params, _examples(PROMPTS), sp, seed=7)
    self.assertEqual(chunked.num_compiles, 2)  # both chunks share programs
    for other in (b, c):
      np.testing.assert_array_equal(a.tokens, other.tokens)
      np.testing.assert_allclose(a.logprobs, other.logprobs, atol=1e-6)
      np.testing.assert_array_equal(a.prompt_index, other.prompt_index)
    d = s.generate(self.params, _examples(PROMPTS), sp, seed=8)
    self.assertFalse(np.array_equal(a.tokens, d.tokens))
    e = s.generate(self.params, _examples(PROMPTS), sp, seed=jax.random.key(7))
    np.testing.assert_array_equal(a.tokens, e.tokens)
    self.assertEqual(s.num_compiles, 2)  # same buckets: nothing new
    s.generate(self.params, _examples(PROMPTS[:1]), sp, seed=0)  # bucket 2
    self.assertEqual(s.num_compiles, 4)
    self.assertGreater(s.compile_seconds, 0)
    # Params of another dtype get their own programs (not a type error).
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), self.params)
    s.generate(half, _examples(PROMPTS[:1]), sp, seed=0)
    self.assertEqual(s.num_compiles, 6)


class SlotsTest(absltest.TestCase):
  """decode_mode="slots" samples what the static path does, row by row."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = _Fake.init_params(jax.random.key(0))
    cls.prompts = _examples(PROMPTS * 3)  # 12 prompts through 4 x G slots: refills

  def test_sampled_and_greedy_rows_equal_static_and_leave_as_they_end(self):
    for sp in (sampling.SamplingParams(max_new_tokens=12, temperature=1.3, group_size=2,
                                       eos_ids=(20, 30), stop_sequences=((40, 41),)),
               sampling.SamplingParams(max_new_tokens=10, greedy=True, eos_ids=(20, 30))):
      want = _fake_sampler(batch_buckets=(2, 4)).generate(self.params, self.prompts, sp,
                                                          seed=1)
      self.assertGreater(len(set(want.lengths.tolist())), 1)  # rows end at different steps
      s = _fake_sampler(batch_buckets=(2, 4), decode_mode="slots", refill_every=3)
      rows = []
      out = s.generate(self.params, self.prompts, sp, seed=1,
                       on_row=lambda r, t, lp, f: rows.append((r, t, lp, f)))
      np.testing.assert_array_equal(out.tokens, want.tokens)
      np.testing.assert_allclose(out.logprobs, want.logprobs, atol=1e-6)
      np.testing.assert_array_equal(out.lengths, want.lengths)
      np.testing.assert_array_equal(out.finish_reason, want.finish_reason)
      np.testing.assert_array_equal(out.prompt_index, want.prompt_index)
      self.assertEqual(out.stats.tokens, want.lengths.sum())
      # Each row once, in the order rows ended (not row order), with its tokens.
      self.assertEqual(sorted(r for r, *_ in rows), list(range(out.num_rows)))
      self.assertNotEqual([r for r, *_ in rows], sorted(r for r, *_ in rows))
      for r, t, lp, f in rows:
        np.testing.assert_array_equal(t, want.tokens[r, :want.lengths[r]])
        self.assertEqual(f, want.finish_reason[r])
      compiles = s.num_compiles
      s.generate(self.params, self.prompts, sp, seed=2)
      self.assertEqual(s.num_compiles, compiles)  # refills reuse the programs

  def test_refill_policy_changes_the_steps_not_the_rows(self):
    sp = sampling.SamplingParams(max_new_tokens=12, temperature=1.3, group_size=2,
                                 eos_ids=(20, 30))
    out = {}
    for fraction in (0.25, 1.0):   # refill when a quarter of the slots is free / all are
      s = _fake_sampler(batch_buckets=(2, 4), decode_mode="slots", refill_fraction=fraction)
      out[fraction] = s.generate(self.params, self.prompts, sp, seed=1)
    np.testing.assert_array_equal(out[1.0].tokens, out[0.25].tokens)
    np.testing.assert_array_equal(out[1.0].lengths, out[0.25].lengths)
    # The policy decides when prompts enter (so the steps run), never what a row samples.
    self.assertNotEqual(out[1.0].stats, out[0.25].stats)
    with self.assertRaisesRegex(ValueError, "refill_fraction=0.0 must be in"):
      _fake_sampler(decode_mode="slots", refill_fraction=0.0)

  def test_static_path_hands_rows_over_by_chunk(self):
    sp = sampling.SamplingParams(max_new_tokens=6, group_size=2)
    rows = []
    out = _fake_sampler(batch_buckets=(2,)).generate(
        self.params, self.prompts[:4], sp, seed=0, on_row=lambda r, *_: rows.append(r))
    self.assertEqual(rows, list(range(out.num_rows)))


class StopTest(absltest.TestCase):
  """With a strong bigram bonus, greedy output counts up: p, p+1, p+2, ..."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = _Fake.init_params(jax.random.key(0), chain=1e3)
    cls.sampler = _fake_sampler()

  def test_eos_stop_sequences_and_length(self):
    sp = sampling.SamplingParams(
        max_new_tokens=10, greedy=True, eos_ids=(9, 50), stop_sequences=((16, 17),),
        pad_id=-1)
    out = self.sampler.generate(
        self.params, _examples([[7], [13], [60], [30, 8]]), sp, seed=0)
    np.testing.assert_array_equal(out.tokens[0, :3], [8, 9, -1])
    np.testing.assert_array_equal(out.tokens[1, :5], [14, 15, 16, 17, -1])
    np.testing.assert_array_equal(out.tokens[2], [61, 62, 63, 0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(out.tokens[3, :2], [9, -1])
    np.testing.assert_array_equal(out.lengths, [2, 4, 10, 1])
    np.testing.assert_array_equal(
        out.finish_reason, [sampling.FINISH_EOS, sampling.FINISH_STOP,
                            sampling.FINISH_LENGTH, sampling.FINISH_EOS])
    after_end = np.arange(10)[None] >= out.lengths[:, None]
    self.assertTrue(np.all(out.tokens[after_end] == -1))
    self.assertTrue(np.all(out.logprobs[after_end] == 0))

  def test_stop_sequence_must_be_generated_not_prompt(self):
    # The prompt ends with 16; generating 17 alone must not match (16, 17).
    sp = sampling.SamplingParams(max_new_tokens=3, greedy=True,
                                 stop_sequences=((16, 17), (40,)))
    out = self.sampler.generate(self.params, _examples([[15, 16], [38]]), sp,
                                seed=0)
    np.testing.assert_array_equal(out.tokens[0], [17, 18, 19])
    self.assertEqual(out.finish_reason[0], sampling.FINISH_LENGTH)
    np.testing.assert_array_equal(out.tokens[1, :2], [39, 40])
    self.assertEqual(out.finish_reason[1], sampling.FINISH_STOP)
    self.assertEqual(out.lengths[1], 2)


class ErrorsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.params = _Fake.init_params(jax.random.key(0))

  def test_errors_name_the_limit(self):
    s = _fake_sampler()
    sp = sampling.SamplingParams(max_new_tokens=4)
    with self.assertRaisesRegex(ValueError, "no prompts"):
      s.generate(self.params, [], sp, seed=0)
    with self.assertRaisesRegex(TypeError, "seed must be an int or one jax"):
      s.generate(self.params, _examples([[7]]), sp, seed=1.5)
    with self.assertRaisesRegex(ValueError, "Prompt 1 is empty"):
      s.generate(self.params, _examples([[1], []]), sp, seed=0)
    with self.assertRaisesRegex(ValueError, r"Example 2 has 17 tokens.*\(16\)"):
      s.generate(self.params, _examples([[7], [8], list(range(20, 37))]), sp, seed=0)
    with self.assertRaisesRegex(ValueError, r"max_cache=48.*at most 32"):
      s.generate(self.params, _examples([list(range(20, 31))]),
                 sp.replace(max_new_tokens=33), seed=0)
    small = np.zeros((4, 1176), np.float32)
    with self.assertRaisesRegex(ValueError, "Prompt 0, image 0.*too small"):
      s.generate(self.params, [batching.Example(
          tokens=np.array([1, 2]), images=[(small, (1, 1, 4))])], sp, seed=0)
    big = np.zeros((16, 1176), np.float32)
    with self.assertRaisesRegex(ValueError, r"16 patches.*patch_buckets \(4\)"):
      s.generate(self.params, [batching.Example(
          tokens=np.array([1, 2]), images=[(big, (1, 4, 4))])], sp, seed=0)
    mesh = parallel.make_mesh({"data": 8})
    with self.assertRaisesRegex(ValueError, "not divisible by 8"):
      _fake_sampler(mesh=mesh, batch_buckets=(4, 8))


def _hf_checkpoint(config, path):
  """A random transformers Qwen2.5-VL saved to `path` (the reference model)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf_config = transformers.Qwen2_5_VLConfig(**hf.config_to_hf(config))
  # Wider than the default init so greedy paths are varied, not repetitive.
  for c in (hf_config, hf_config.text_config, hf_config.vision_config):
    c.initializer_range = 0.1
  model = transformers.Qwen2_5_VLForConditionalGeneration(hf_config).eval()
  model.save_pretrained(path)
  return model


def _vlm_prompts(config):
  """Text only, one image, two images of different sizes, a 3x3-block image."""
  rng = np.random.default_rng(0)

  def prompt(*parts):
    tokens, imgs = [], []
    for part in parts:
      if isinstance(part, tuple):
        patches, grid = images.preprocess_image(
            rng.integers(0, 256, part + (3,), dtype=np.uint8))
        tokens += ([config.vision_start_token_id]
                   + [config.image_token_id] * images.num_image_tokens(grid)
                   + [config.vision_end_token_id])
        imgs.append((patches, grid))
      else:
        tokens += part
    return batching.Example(tokens=np.asarray(tokens, np.int32), images=imgs)

  return [prompt([1, 40, 41, 42]),
          prompt([1, 50], (56, 56), [51, 52]),
          prompt([1], (56, 84), [60], (84, 56), [61, 62, 63]),
          prompt([1, 70], (84, 84))]


class VLMSamplerTest(absltest.TestCase):
  """The real tiny Qwen2.5-VL (fp32): transformers parity, scoring, mesh."""

  N = 8

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    base = tiny()
    cls.config = base.replace(text=dataclasses.replace(
        base.text, tie_word_embeddings=False))
    cls.tmp = tempfile.TemporaryDirectory()
    cls.hf_model = _hf_checkpoint(cls.config, cls.tmp.name)
    cls.params = hf.load_params(cls.tmp.name, hf.config_from_hf(cls.tmp.name))
    cls.prompts = _vlm_prompts(cls.config)
    cls.kw = dict(length_buckets=(32,), patch_buckets=(0, 64),
                  batch_buckets=(4,), max_cache=48)
    cls.sampler = sampling.Sampler(cls.config, **cls.kw)
    cls.sp = sampling.SamplingParams(max_new_tokens=cls.N, group_size=2)
    cls.sampled = cls.sampler.generate(cls.params, cls.prompts, cls.sp, seed=3)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_greedy_matches_transformers_generate(self):
    import torch  # pylint: disable=g-import-not-at-top
    c = self.config
    length = max(e.num_tokens for e in self.prompts)
    ids = np.zeros((4, length), np.int64)
    attn = np.zeros_like(ids)
    for i, e in enumerate(self.prompts):
      ids[i, length - e.num_tokens:] = e.tokens
      attn[i, length - e.num_tokens:] = 1
    with torch.no_grad():
      ref = self.hf_model.generate(
          input_ids=torch.tensor(ids), attention_mask=torch.tensor(attn),
          pixel_values=torch.tensor(np.concatenate(
              [p for e in self.prompts for p, _ in e.images])),
          image_grid_thw=torch.tensor(
              [g for e in self.prompts for _, g in e.images]),
          mm_token_type_ids=torch.tensor((ids == c.image_token_id).astype(np.int64)),
          max_new_tokens=self.N, do_sample=False, eos_token_id=None,
          pad_token_id=0)[:, length:].numpy()
    sp = sampling.SamplingParams(max_new_tokens=self.N, greedy=True,
                                 group_size=2)
    out = self.sampler.generate(self.params, self.prompts, sp, seed=0)
    np.testing.assert_array_equal(out.tokens, np.repeat(ref, 2, axis=0))
    self.assertTrue((out.finish_reason == sampling.FINISH_LENGTH).all())
    # Alone (3 filler rows), the two-image prompt decodes the same way.
    alone = self.sampler.generate(self.params, self.prompts[2:3], sp, seed=0)
    np.testing.assert_array_equal(alone.tokens, np.repeat(ref[2:3], 2, axis=0))

  def test_logprobs_match_scoring_path(self):
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
    logits = jax.jit(vlm.forward, static_argnums=1)(
        self.params, c, jax.tree.map(jnp.asarray, inputs))
    lp = np.asarray(jax.nn.log_softmax(logits, -1))
    want = np.zeros_like(out.logprobs)
    for r, ex in enumerate(full):
      n = ex.num_tokens
      cols = np.arange(n - self.N, n)
      want[r] = lp[r, cols - 1, ex.tokens[cols]]
    np.testing.assert_allclose(out.logprobs, want, atol=1e-4, rtol=0)
    stats = sampling.mismatch_stats(out.logprobs, want, np.ones_like(want))
    self.assertLess(stats["max_abs"], 1e-4)
    self.assertAlmostEqual(stats["ratio_mean"], 1.0, places=4)
    self.assertEqual(stats["tokens"], want.size)
    # A trainer off by one position would show up plainly.
    shifted = sampling.mismatch_stats(out.logprobs, np.roll(want, 1, axis=1),
                                      np.ones_like(want))
    self.assertGreater(shifted["mean_abs"], 0.1)

  def test_mesh_matches_single_device(self):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # Also in stages (cache grown from 4 to 8 new tokens) on the mesh.
    sharded = sampling.Sampler(self.config, mesh=mesh, first_stage_tokens=4,
                               **self.kw)
    out = sharded.generate(self.params, self.prompts, self.sp, seed=3)
    np.testing.assert_array_equal(out.tokens, self.sampled.tokens)
    np.testing.assert_allclose(out.logprobs, self.sampled.logprobs, atol=1e-5)
    np.testing.assert_array_equal(out.lengths, self.sampled.lengths)


  def test_slots_sample_what_static_does_on_the_mesh(self):
    # 8 prompts with images of different sizes (different rope deltas) through
    # 4 x G slots; two tokens the model samples early end rows at different steps.
    prompts = self.prompts * 2
    sp = self.sp.replace(eos_ids=tuple(int(t) for t in np.unique(self.sampled.tokens[:, 2])[:2]))
    want = self.sampler.generate(self.params, prompts, sp, seed=3)
    self.assertGreater(len(set(want.lengths.tolist())), 1)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    slots = sampling.Sampler(self.config, mesh=mesh, decode_mode="slots", refill_every=2,
                             **self.kw)
    out = slots.generate(self.params, prompts, sp, seed=3)
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_array_equal(out.finish_reason, want.finish_reason)
    np.testing.assert_allclose(out.logprobs, want.logprobs, atol=1e-5)

  def test_memory_analysis_plans_the_programs_generate_runs(self):
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            self.params)
    plans = {}
    for name, mesh in (("one", None), ("mesh", parallel.make_mesh(
        {"data": 2, "fsdp": 2, "tensor": 2}))):
      sampler = sampling.Sampler(self.config, mesh=mesh, **self.kw)
      plans[name] = sampler.memory_analysis(abstract, self.sp, length=32,
                                            patches=64)
      self.assertEqual(sampler.num_compiles, 2)
      # generate runs exactly the planned programs (no new compile).
      out = sampler.generate(self.params, self.prompts, self.sp, seed=3)
      self.assertEqual(sampler.num_compiles, 2)
      np.testing.assert_array_equal(out.tokens, self.sampled.tokens)
    t = self.config.text
    rows = 4 * self.sp.group_size
    kv_bytes = 2 * t.num_layers * rows * t.num_kv_heads * (32 + self.N) * t.head_dim * 4
    one = plans["one"]["decode"].argument_size_in_bytes
    self.assertGreater(one, kv_bytes)
    # Per device on the mesh: rows split 4 ways, KV heads 2 ways.
    self.assertLess(plans["mesh"]["decode"].argument_size_in_bytes, one - kv_bytes / 2)

  def test_compile_slots_plans_the_programs_slot_generate_runs(self):
    from evejax.sampling import continuous  # pylint: disable=g-import-not-at-top
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.params)
    t = self.config.text
    # The ring: every slot (4 prompts x G) holds a 32-token prompt and N new tokens.
    ring_kv = 2 * t.num_layers * 4 * self.sp.group_size * t.num_kv_heads * (
        32 + self.N) * t.head_dim * 4
    for mesh in (None, parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})):
      sampler = sampling.Sampler(self.config, mesh=mesh, decode_mode="slots", **self.kw)
      plan = continuous.compile_slots(sampler, abstract, self.sp, length=32, patches=64)
      self.assertEqual(sampler.num_compiles, 4)   # init, prefill, insert, decode
      self.assertEqual(set(plan["seconds"]), {"init", "prefill", "insert", "decode"})
      decode = plan["decode"].memory_analysis().argument_size_in_bytes
      split = 1 if mesh is None else 8   # the ring's rows 4 ways, its KV heads 2 ways
      self.assertGreater(decode, ring_kv / split)
      # generate runs exactly the planned programs (4 prompts fill every slot at once).
      out = sampler.generate(self.params, self.prompts, self.sp, seed=3)
      self.assertEqual(sampler.num_compiles, 4)
      np.testing.assert_array_equal(out.tokens, self.sampled.tokens)

if __name__ == "__main__":
  absltest.main()
