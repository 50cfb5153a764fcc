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
