"""Host glue between sampling and learning: prompts + completions -> TrainBatch.

A rollout row is a prompt (`batching.Example`: tokens and images) followed by a
sampled completion. The learner scores token t from the logits at t - 1, so a
completion token at sequence position p has its target, loss mask and old
log-prob at p - 1. Rows added to reach a batch bucket carry no loss.

One builder serves every recipe and every step kind: GRPO (advantages and the
sampler's log-probs), SFT (a target text instead of a sampled completion) and
REINFORCE (rewards).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from evejax.models.presets import ModelConfig
from evejax.processing import batching
from evejax.rl.learner import TrainBatch
from evejax.rl.learner import targets_from_tokens


def _bucket_rows(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def train_batch(prompts: Sequence[batching.Example],
                completions: Sequence[Sequence[int]], *,
                model_config: ModelConfig, pad_id: int,
                length_buckets: Sequence[int], patch_buckets: Sequence[int],
                row_multiple: int = 1,
                sampler_logp: Sequence[Sequence[float]] | None = None,
                advantages: Sequence[float] | None = None,
                rewards: Sequence[float] | None = None) -> TrainBatch:
  """A right-padded TrainBatch of prompt + completion rows (numpy arrays).

  Args:
    prompts: one Example per row (the same Example may repeat for a group).
    completions: the completion token ids of each row (EOS included if any).
      A completion holding image-structure tokens (see `vision_token_ids`) is
      kept as padding with no loss (count them with `has_vision_tokens`).
    model_config: for the image-token ids and vision shapes.
    pad_id: token id of padding.
    length_buckets, patch_buckets: static shapes (see `batching.collate`).
    row_multiple: the batch size is rounded up to a multiple of this
      (micro-batches x data shards); filler rows have no loss.
    sampler_logp: per row, the sampler's log-prob of each completion token;
      becomes `old_logp` (the behaviour policy; also what the step's
      `sampler_approx_kl` compares the trainer with).
    advantages: one per row (GRPO).
    rewards: one per row (REINFORCE).
  """
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
  vision_ids = np.asarray(vision_token_ids(model_config), np.int32)
  examples, silenced = [], []
  for p, c in zip(prompts, completions):
    c = np.asarray(c, np.int32)
    # A sampled image/vision token has no image behind it: as input it would
    # claim a patch slot. It is replaced by padding and the row carries no loss.
    bad = np.isin(c, vision_ids)
    silenced.append(bool(bad.any()))
    c = np.where(bad, pad_id, c)
    tokens = np.concatenate([np.asarray(p.tokens, np.int32), c])
    mask = np.concatenate([np.zeros(len(p.tokens), np.int32), np.ones(len(c), np.int32)])
    examples.append(batching.Example(tokens=tokens, images=p.images, loss_mask=mask))
  rows = _bucket_rows(len(examples), row_multiple)
  b = batching.collate(
      examples, vision=model_config.vision, image_token_id=model_config.image_token_id,
      vision_start_id=model_config.vision_start_token_id, pad_id=pad_id,
      length_buckets=length_buckets, patch_buckets=patch_buckets,
      batch_buckets=(rows,), padding="right")
  tokens = np.asarray(b.inputs.tokens)
  targets, loss_mask = targets_from_tokens(tokens, b.loss_mask)
  loss_mask[:len(silenced)][np.asarray(silenced, bool)] = 0.0

  def per_row(values):
    out = np.zeros((rows,), np.float32)
    out[:len(values)] = np.asarray(values, np.float32)
    return out

  old = None
  if sampler_logp is not None:
    old = np.zeros(tokens.shape, np.float32)
    for i, (p, lp) in enumerate(zip(prompts, sampler_logp)):
      start = len(p.tokens) - 1  # position predicting the first completion token
      lp = np.asarray(lp, np.float32)
      old[i, start:start + len(lp)] = lp
  return TrainBatch(
      inputs=b.inputs, targets=targets.astype(np.int32), loss_mask=loss_mask,
      old_logp=old,
      advantages=None if advantages is None else per_row(advantages),
      rewards=None if rewards is None else per_row(rewards))


def vision_token_ids(model_config: ModelConfig) -> tuple[int, ...]:
  """Tokens that mark image structure; a completion must not feed them back as input."""
  return (model_config.image_token_id, model_config.video_token_id,
          model_config.vision_start_token_id, model_config.vision_end_token_id)


def has_vision_tokens(model_config: ModelConfig, completion: Sequence[int]) -> bool:
  return bool(np.isin(np.asarray(completion), vision_token_ids(model_config)).any())


def completions_from_samples(out) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Per-row (token ids, log-probs) of a SampleOutput, cut at each row's length."""
  toks = np.asarray(out.tokens)
  lps = np.asarray(out.logprobs)
  lens = np.asarray(out.lengths)
  return ([toks[i, :n] for i, n in enumerate(lens)],
          [lps[i, :n] for i, n in enumerate(lens)])
