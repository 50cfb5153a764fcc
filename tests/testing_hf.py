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
