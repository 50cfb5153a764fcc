"""Test helpers: tiny random HF checkpoints (any family) and reference runs.

The implementations live in `evejax.tools.hf_parity` (the parity CLI needs
them on a fresh machine too); this module gives tests one import point and a
few conveniences. Importing it imports torch + transformers (slow: do it once
per test file).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from evejax.models import hf
from evejax.tools.hf_parity import (  # noqa: F401  (re-exported)
    QWEN3_VL_GAINS, TINY_CHECKPOINTS, build_examples, default_segments,
    hf_logits, hf_positions, image_processor, load_hf_model,
    make_tiny_hf_checkpoint, make_tiny_qwen3_vl_checkpoint, real_logits,
    to_model_inputs)


class TinyCheckpoint:
  """A tiny checkpoint written to a temp dir, with its HF model and config.

  `family` picks the maker (`hf_parity.TINY_CHECKPOINTS`); other keyword
  arguments go to it.
  """

  def __init__(self, *, seed: int = 0, family: str = "qwen2_5_vl", **kwargs):
    self._tmp = tempfile.TemporaryDirectory()
    self.dir = os.path.join(self._tmp.name, "ckpt")
    TINY_CHECKPOINTS[family](self.dir, seed=seed, **kwargs)
    self.config = hf.config_from_hf(self.dir)
    self.model = load_hf_model(self.dir)

  def examples(self, segments, seed: int = 0):
    """(examples, HF positions per example, HF logits per example)."""
    exs = build_examples(self.config, segments, seed=seed)
    return (exs, [hf_positions(self.model, e) for e in exs],
            [hf_logits(self.model, e) for e in exs])

  def cleanup(self):
    self._tmp.cleanup()


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def as_example(ex: dict):
  """An HF-processed prompt (`build_examples`) as a batching.Example, its
  patches split per image."""
  from evejax.processing import batching  # pylint: disable=g-import-not-at-top
  images, start = [], 0
  for grid in ex.get("image_grid_thw", ()):
    n = int(np.prod(grid))
    images.append((ex["pixel_values"][start:start + n],
                   tuple(int(g) for g in grid)))
    start += n
  return batching.Example(tokens=ex["input_ids"].astype(np.int32),
                          images=images)


def hf_greedy(model, config, prompts, new_tokens: int) -> np.ndarray:
  """transformers' greedy `generate` of left-padded batching.Examples (EOS
  off): int [B, new_tokens]."""
  import torch  # pylint: disable=g-import-not-at-top
  length = max(e.num_tokens for e in prompts)
  ids = np.zeros((len(prompts), length), np.int64)
  attn = np.zeros_like(ids)
  for i, e in enumerate(prompts):
    ids[i, length - e.num_tokens:] = e.tokens
    attn[i, length - e.num_tokens:] = 1
  kw = {}
  if any(e.images for e in prompts):
    kw = dict(pixel_values=torch.tensor(np.concatenate(
                  [p for e in prompts for p, _ in e.images])),
              image_grid_thw=torch.tensor(
                  [g for e in prompts for _, g in e.images]))
  with torch.no_grad():
    out = model.generate(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(attn),
        mm_token_type_ids=torch.tensor(
            ((ids == config.image_token_id) & (attn == 1)).astype(np.int64)),
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
        pad_token_id=0, **kw)
  return out[:, length:].numpy()


class SamplingChecks:
  """Sampling tests every family passes, mixed into a family's TestCase.

  The TestCase's setUpClass calls `set_up_sampling(family, **checkpoint_kw)`;
  a test then finds `ckpt`, `config`, `params`, `prompts` (two prompts with
  images, one with two of different sizes, and two without), `kw` (the
  Sampler's buckets), `sampler`, `sp` and `sampled` (G=2 samples of every
  prompt) on the class.
  """
  NEW_TOKENS = 8

  @classmethod
  def set_up_sampling(cls, family: str, **checkpoint_kw):
    from evejax import sampling  # pylint: disable=g-import-not-at-top
    cls.ckpt = TinyCheckpoint(family=family, seed=5, **checkpoint_kw)
    cls.config = cls.ckpt.config
    cls.params = hf.load_params(cls.ckpt.dir, cls.config)
    cls.prompts = [as_example(e) for e in build_examples(
        cls.config, [[3, (64, 96), 2], [5], [2, (96, 64), 1, (32, 64), 2], [7]], seed=6)]
    cls.kw = dict(length_buckets=(32,), patch_buckets=(0, 64), batch_buckets=(4,),
                  max_cache=48)
    cls.sampler = sampling.Sampler(cls.config, **cls.kw)
    cls.sp = sampling.SamplingParams(max_new_tokens=cls.NEW_TOKENS, group_size=2)
    cls.sampled = cls.sampler.generate(cls.params, cls.prompts, cls.sp, seed=3)

  @classmethod
  def tearDownClass(cls):
    cls.ckpt.cleanup()
    super().tearDownClass()

  def test_greedy_matches_transformers_generate(self):
    from evejax import sampling  # pylint: disable=g-import-not-at-top
    n = self.NEW_TOKENS
    ref = hf_greedy(self.ckpt.model, self.config, self.prompts, n)
    sp = sampling.SamplingParams(max_new_tokens=n, greedy=True)
    out = self.sampler.generate(self.params, self.prompts, sp, seed=0)
    np.testing.assert_array_equal(out.tokens, ref)
    self.assertGreater(len(np.unique(ref)), 4)  # varied paths, not one token
    # Alone (3 filler rows), the two-image prompt decodes the same way.
    alone = self.sampler.generate(self.params, self.prompts[2:3], sp, seed=0)
    np.testing.assert_array_equal(alone.tokens, ref[2:3])
    # A batch without any image (transformers' text-only path).
    text = [p for p in self.prompts if not p.images]
    out = self.sampler.generate(self.params, text, sp, seed=0)
    np.testing.assert_array_equal(out.tokens, hf_greedy(self.ckpt.model, self.config, text, n))

  def test_logprobs_match_the_learner_scoring_path(self):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from evejax.processing import batching  # pylint: disable=g-import-not-at-top
    from evejax.rl import learner as learner_lib  # pylint: disable=g-import-not-at-top
    out, n, c = self.sampled, self.NEW_TOKENS, self.config
    full = [batching.Example(tokens=np.concatenate([self.prompts[p].tokens, t]),
                             images=self.prompts[p].images)
            for p, t in zip(out.prompt_index, out.tokens)]
    inputs = batching.make_batch(
        full, vision=c.vision, image_token_id=c.image_token_id,
        vision_start_id=c.vision_start_token_id, pad_id=0,
        length_buckets=(48,), patch_buckets=(64,), padding="right")
    targets = np.zeros_like(inputs.tokens)
    targets[:, :-1] = inputs.tokens[:, 1:]
    lp = np.asarray(jax.jit(learner_lib.token_logprobs, static_argnums=1)(
        self.params, c, jax.tree.map(jnp.asarray, inputs), jnp.asarray(targets)))
    want = np.stack([lp[r, ex.num_tokens - n - 1:ex.num_tokens - 1]
                     for r, ex in enumerate(full)])
    np.testing.assert_allclose(out.logprobs, want, atol=1e-4, rtol=0)
    self.assertGreater(np.abs(want).mean(), 0.5)  # not all near-certain

  def test_mesh_and_scanned_layout_sample_the_same(self):
    from evejax import parallel  # pylint: disable=g-import-not-at-top
    from evejax import sampling  # pylint: disable=g-import-not-at-top
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # A first cache stage of 4 new tokens: the cache grows mid-decode.
    sharded = sampling.Sampler(self.config, mesh=mesh, first_stage_tokens=4, **self.kw)
    scanned = sampling.Sampler(self.config, unroll_layers=False, **self.kw)
    for other in (sharded, scanned):
      out = other.generate(self.params, self.prompts, self.sp, seed=3)
      np.testing.assert_array_equal(out.tokens, self.sampled.tokens)
      np.testing.assert_allclose(out.logprobs, self.sampled.logprobs, atol=1e-5)

  def test_slots_sample_what_static_does(self):
    from evejax import parallel  # pylint: disable=g-import-not-at-top
    from evejax import sampling  # pylint: disable=g-import-not-at-top
    # 8 prompts (images of different sizes: different rope deltas) through 4 x G
    # slots; tokens the model samples early end rows at different steps.
    prompts = self.prompts * 2
    eos = tuple(int(t) for t in np.unique(self.sampled.tokens[:, 2])[:2])
    sp = self.sp.replace(eos_ids=eos)
    greedy = sp.replace(greedy=True, group_size=1)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    one = sampling.Sampler(self.config, decode_mode="slots", refill_every=2, **self.kw)
    sharded = sampling.Sampler(self.config, mesh=mesh, decode_mode="slots", refill_every=2,
                               **self.kw)
    for s, settings in ((one, sp), (one, greedy), (sharded, sp), (sharded, greedy)):
      want = self.sampler.generate(self.params, prompts, settings, seed=3)
      self.assertGreater(len(set(want.lengths.tolist())), 1)
      out = s.generate(self.params, prompts, settings, seed=3)
      np.testing.assert_array_equal(out.tokens, want.tokens)
      np.testing.assert_array_equal(out.lengths, want.lengths)
      np.testing.assert_array_equal(out.finish_reason, want.finish_reason)
      np.testing.assert_allclose(out.logprobs, want.logprobs, atol=1e-5)

  def grpo_batch(self):
    """The sampled rows as a GRPO batch with random advantages."""
    from evejax.rl import rollouts  # pylint: disable=g-import-not-at-top
    out = self.sampled
    return rollouts.train_batch(
        [self.prompts[p] for p in out.prompt_index],
        [t[:n] for t, n in zip(out.tokens, out.lengths)], model_config=self.config,
        pad_id=0, length_buckets=(48,), patch_buckets=(64,),
        sampler_logp=[lp[:n] for lp, n in zip(out.logprobs, out.lengths)],
        advantages=np.random.default_rng(0).standard_normal(len(out.prompt_index)))

  def assert_moved(self, before, after, parts):
    """Every subtree of `parts` (key paths) changed by more than 1e-5 somewhere."""
    import jax  # pylint: disable=g-import-not-at-top
    for part in parts:
      a, b = before, after
      for k in part:
        a, b = a[k], b[k]
      moved = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
      self.assertGreater(moved, 1e-5, "/".join(part))
