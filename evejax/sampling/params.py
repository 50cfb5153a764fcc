"""What the caller asks of the sampler (`SamplingParams`) and what it gets back.

`SamplingParams` is a frozen, hashable dataclass: it is a static argument of the
compiled decode loop, so each distinct value compiles once.

Log-probs. The trainer (GRPO) recomputes log pi(token) with its own forward
pass as log_softmax(logits / T) over the whole vocabulary (verl's convention:
the trainer knows the temperature, not top-k/top-p). The sampler reports the
same quantity by default (`logprob_mode="policy"`), so the old log-probs of
GRPO and the sampler/trainer mismatch metric compare like with like. Two other
modes exist: "raw" = log_softmax(logits) (T = 1, no truncation) and "sampling"
= log-prob under the distribution the token was actually drawn from (after
temperature, top-k and top-p; 0 for greedy).
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax

# Finish reasons, one per returned row.
FINISH_EOS = 1      # emitted one of `eos_ids` (the token is kept, counted in length)
FINISH_STOP = 2     # the completion ends with one of `stop_sequences` (kept)
FINISH_LENGTH = 3   # reached `max_new_tokens`
FINISH_NAMES = {FINISH_EOS: "eos", FINISH_STOP: "stop", FINISH_LENGTH: "length"}

LOGPROB_MODES = ("policy", "raw", "sampling")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to sample. Lists given for the tuple fields are converted to tuples."""
  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0          # 0: off
  top_p: float = 1.0      # 1.0: off
  greedy: bool = False    # argmax; temperature then only affects log-probs
  group_size: int = 1     # completions per prompt, sharing one prefill
  eos_ids: tuple[int, ...] = ()
  stop_sequences: tuple[tuple[int, ...], ...] = ()
  pad_id: int = 0         # written after a row's end
  logprob_mode: str = "policy"

  def __post_init__(self):
    # Accept lists (e.g. from a ConfigDict) but keep the object hashable.
    object.__setattr__(self, "eos_ids", tuple(int(t) for t in self.eos_ids))
    object.__setattr__(self, "stop_sequences", tuple(
        tuple(int(t) for t in s) for s in self.stop_sequences))
    if int(self.max_new_tokens) < 1:
      raise ValueError(
          f"SamplingParams.max_new_tokens={self.max_new_tokens}; it must be >= 1.")
    if not self.greedy and not self.temperature > 0:
      raise ValueError(
          f"SamplingParams.temperature={self.temperature}; it must be > 0 "
          "(for argmax decoding set greedy=True instead of temperature 0).")
    if self.greedy and not self.temperature > 0:
      raise ValueError(
          f"SamplingParams.temperature={self.temperature}; it must be > 0 even "
          "with greedy=True, because log-probs are computed at it (use 1.0).")
    if self.top_k < 0:
      raise ValueError(f"SamplingParams.top_k={self.top_k}; use 0 (off) or >= 1.")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingParams.top_p={self.top_p}; it must be in (0, 1].")
    if self.group_size < 1:
      raise ValueError(
          f"SamplingParams.group_size={self.group_size}; it must be >= 1.")
    if any(len(s) == 0 for s in self.stop_sequences):
      raise ValueError("SamplingParams.stop_sequences contains an empty sequence; "
                       "every stop sequence needs at least one token id.")
    if self.logprob_mode not in LOGPROB_MODES:
      raise ValueError(f"SamplingParams.logprob_mode={self.logprob_mode!r}; "
                       f"valid modes: {LOGPROB_MODES}.")

  def replace(self, **kw) -> "SamplingParams":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class DecodeStats:
  """How full the device was while one `generate` call decoded.

  A step is one batched token pick over every row (or slot) of a program: the
  first token of a prefill, then each decode step. Rows that finished early,
  filler rows and empty slots still take their share of a step, so
  `occupancy` = kept tokens / (rows x steps) is the fraction of the decode
  work that produced a completion token.
  """
  decode_steps: int = 0  # batched token steps run
  row_steps: int = 0     # sum over those steps of the rows (slots) they computed
  tokens: int = 0        # completion tokens kept (sum of lengths)

  @property
  def occupancy(self) -> float:
    return self.tokens / self.row_steps if self.row_steps else 0.0

  def __add__(self, other: "DecodeStats") -> "DecodeStats":
    return DecodeStats(self.decode_steps + other.decode_steps,
                       self.row_steps + other.row_steps, self.tokens + other.tokens)

  def metrics(self) -> dict[str, float]:
    """`sampling/occupancy` and `sampling/decode_steps`, for a metrics writer."""
    return {"sampling/occupancy": float(self.occupancy),
            "sampling/decode_steps": float(self.decode_steps)}


@flax.struct.dataclass
class SampleOutput:
  """Completions, rows ordered prompt-major, group-minor (row = p * G + g)."""
  tokens: jax.Array         # int32 [R, N]; pad_id after the end
  logprobs: jax.Array       # f32 [R, N]; log-prob of each sampled token, 0 after the end
  lengths: jax.Array        # int32 [R]; tokens up to and including EOS / stop sequence
  finish_reason: jax.Array  # int32 [R]; FINISH_EOS, FINISH_STOP or FINISH_LENGTH
  prompt_index: jax.Array   # int32 [R]; index of the prompt in the `generate` call
  stats: DecodeStats | None = flax.struct.field(pytree_node=False, default=None)

  @property
  def num_rows(self) -> int:
    return self.tokens.shape[0]
