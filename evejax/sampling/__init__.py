"""Sampling: prefill prompts once, decode groups of completions on the mesh.

The public face; the pieces live in small modules:
  params.py   SamplingParams, SampleOutput, DecodeStats, FINISH_* constants
  select.py   sample_tokens: greedy / temperature / top-k / top-p
  loop.py     decode_loop: the compiled while-loop over new tokens
  slots.py    slot decoding on the device: a ring cache of S refillable rows
  continuous.py  SlotRun: the host loop that refills slots and hands rows over
  sampler.py  Sampler: buckets, compiles, shardings, errors
  metrics.py  mismatch_stats: sampler vs trainer log-probs
"""
from evejax.sampling.loop import decode_loop
from evejax.sampling.loop import stage_ends
from evejax.sampling.metrics import mismatch_stats
from evejax.sampling.params import DecodeStats
from evejax.sampling.params import FINISH_EOS
from evejax.sampling.params import FINISH_LENGTH
from evejax.sampling.params import FINISH_NAMES
from evejax.sampling.params import FINISH_STOP
from evejax.sampling.params import SampleOutput
from evejax.sampling.params import SamplingParams
from evejax.sampling.sampler import Sampler
from evejax.sampling.sampler import replicate_rows
from evejax.sampling.sampler import seed_key
from evejax.sampling.select import sample_tokens

__all__ = [
    "DecodeStats", "FINISH_EOS", "FINISH_LENGTH", "FINISH_NAMES", "FINISH_STOP",
    "SampleOutput", "SamplingParams", "Sampler", "decode_loop", "mismatch_stats",
    "replicate_rows", "sample_tokens", "seed_key", "stage_ends",
]
