"""Sampler/trainer log-prob mismatch: the step-0 health check of GRPO.

The sampler's log-probs (`SampleOutput.logprobs`, logprob_mode="policy") and
the trainer's recomputed ones should agree token for token when both run the
same params at the same temperature; a drift shows numerics or
padding/position bugs before they show as a bad importance ratio.
"""
from __future__ import annotations

import numpy as np


def mismatch_stats(sampler_logprobs, trainer_logprobs, mask) -> dict[str, float]:
  """Summary of |trainer - sampler| over the completion tokens.

  Args:
    sampler_logprobs: [R, N] from `SampleOutput.logprobs`.
    trainer_logprobs: [R, N] the trainer's log pi(token), same layout.
    mask: [R, N] 1 on completion tokens (e.g. arange(N) < lengths[:, None]).

  Returns:
    mean_abs, max_abs: of the log-prob difference; ratio_mean: mean of
    exp(trainer - sampler), the importance ratio at step 0 (ideally 1);
    tokens: how many tokens were compared.
  """
  a = np.asarray(sampler_logprobs, np.float64)
  b = np.asarray(trainer_logprobs, np.float64)
  m = np.asarray(mask).astype(bool)
  if a.shape != b.shape or a.shape != m.shape:
    raise ValueError(f"mismatch_stats: shapes differ: sampler {a.shape}, "
                     f"trainer {b.shape}, mask {m.shape}.")
  d = (b - a)[m]
  if d.size == 0:
    return dict(mean_abs=0.0, max_abs=0.0, ratio_mean=1.0, tokens=0)
  return dict(mean_abs=float(np.abs(d).mean()), max_abs=float(np.abs(d).max()),
              ratio_mean=float(np.exp(d).mean()), tokens=int(d.size))
