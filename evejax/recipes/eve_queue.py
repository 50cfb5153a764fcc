"""EVE's code-example queue: the programs shown to the Challenger as examples.

Seeds are never evicted; other entries are kept top-K by difficulty. A new
program is admitted only if it ran and passed every validity check, its
difficulty is above a band threshold, its function is short with few comments,
and it is not a near-duplicate (sentence-BLEU) of anything queued. The queue is
plain JSON so it travels inside every checkpoint.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from evejax.rewards import diversity
from evejax.rewards import eve as eve_rewards


@dataclasses.dataclass
class Entry:
  program: str           # the full program shown as an example (imports, edit_image, args_list)
  difficulty: float
  seed: bool = False
  family: str = ""       # built-in family name, "" for Challenger programs
  admitted_at: int = 0   # Challenger step of admission

  @property
  def function_text(self) -> str:
    """The program above `args_list`: what length, comment and BLEU rules look at."""
    return eve_rewards.split_program(self.program)[0]

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class QueueConfig:
  capacity: int = 50
  min_difficulty: float = 0.5
  max_function_chars: int = 2000
  max_comments: int = 2
  bleu_threshold: float = 0.25
  examples_per_prompt: tuple[int, ...] = (1, 2)

  @classmethod
  def from_config(cls, c) -> "QueueConfig":
    return cls(capacity=c.capacity, min_difficulty=c.min_difficulty,
               max_function_chars=c.max_function_chars, max_comments=c.max_comments,
               bleu_threshold=c.bleu_threshold,
               examples_per_prompt=tuple(c.examples_per_prompt))


class ExampleQueue:
  """Seeds plus the top-K admitted Challenger programs by difficulty."""

  def __init__(self, config: QueueConfig, seeds: Sequence[tuple[str, str]] = ()):
    """`seeds` are (family name, full program) pairs, kept forever."""
    self.config = config
    self.entries: list[Entry] = [
        Entry(program=prog, difficulty=1.0, seed=True, family=name) for name, prog in seeds]

  def __len__(self) -> int:
    return len(self.entries)

  @property
  def num_admitted(self) -> int:
    return sum(not e.seed for e in self.entries)

  def rejection_reason(self, program: str, difficulty: float, valid: bool) -> str | None:
    """Why `program` may not enter the queue, or None if it may."""
    c = self.config
    source = eve_rewards.split_program(program)[0]
    if not valid:
      return "invalid"
    if not difficulty > c.min_difficulty:
      return "difficulty_out_of_band"
    if len(source) >= c.max_function_chars:
      return "too_long"
    if eve_rewards.count_comment_markers(source) > c.max_comments:
      return "too_many_comments"
    if diversity.bleu_near_duplicate(source, [e.function_text for e in self.entries],
                                     threshold=c.bleu_threshold):
      return "near_duplicate"
    return None

  def offer(self, program: str, difficulty: float, valid: bool, step: int = 0) -> str:
    """Tries to admit a program; returns 'admitted' or the rejection reason."""
    reason = self.rejection_reason(program, difficulty, valid)
    if reason is not None:
      return reason
    entry = Entry(program=program, difficulty=float(difficulty), admitted_at=step)
    if len(self.entries) < self.config.capacity:
      self.entries.append(entry)
      return "admitted"
    evictable = [i for i, e in enumerate(self.entries) if not e.seed]
    if not evictable:
      return "queue_full"
    weakest = min(evictable, key=lambda i: self.entries[i].difficulty)
    if self.entries[weakest].difficulty >= entry.difficulty:
      return "below_top_k"
    self.entries[weakest] = entry
    return "admitted"

  def sample_examples(self, rng: np.random.Generator) -> list[Entry]:
    """1 or 2 entries (each count equally likely), drawn uniformly without replacement."""
    k = int(rng.choice(self.config.examples_per_prompt))
    k = min(k, len(self.entries))
    idx = rng.choice(len(self.entries), size=k, replace=False)
    return [self.entries[i] for i in sorted(idx)]

  def state(self) -> list[dict[str, Any]]:
    return [e.to_json() for e in self.entries]

  def restore(self, state: list[dict[str, Any]]) -> None:
    self.entries = [Entry(**e) for e in state]

  def stats(self) -> dict[str, float]:
    admitted = [e.difficulty for e in self.entries if not e.seed]
    return {
        "queue/size": float(len(self.entries)),
        "queue/admitted": float(len(admitted)),
        "queue/mean_difficulty": float(np.mean(admitted)) if admitted else 0.0,
    }
