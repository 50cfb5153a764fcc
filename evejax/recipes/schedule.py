"""A run's schedule: stages of steps, and what a position in it means.

A recipe declares its schedule as a list of `Stage`s; most have the shape

    eval, [warm start stages, eval], I x (phase stages..., eval)

which `iterated` builds. A stage also declares the lifecycle of the roles it
touches, and the runner carries it out:

  optimizer="sft"   the stage's role learns with its warm-start optimizer;
                    after the schedule's last such stage every policy that
                    learned by SFT starts RL (a fresh optimizer, those weights
                    as its KL reference)
  frozen=(names)    those roles are frozen (their weights as at the stage's
                    start) for the stage, and dropped at its end
  trains=False      an evaluation: no train step, the metrics' step stays
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Stage:
  """`steps` steps of one kind; `role` names the role it trains ("" = none)."""
  kind: str
  role: str = ""
  iteration: int = 0
  steps: int = 1
  trains: bool = True
  optimizer: str = "rl"                 # "sft": a warm start of `role`
  frozen: tuple[str, ...] = ()          # roles frozen for this stage

  @property
  def name(self) -> str:
    parts = [self.kind] + ([self.role] if self.role else []) + [f"iter{self.iteration}"]
    return "/".join(parts)


def evaluation(iteration: int) -> Stage:
  return Stage("eval", iteration=iteration, trains=False)


def iterated(warmstart: Sequence[Stage], iterations: int,
             phases: Callable[[int], Sequence[Stage]]) -> list[Stage]:
  """eval, [warm start, eval], then `iterations` x (phases(i)..., eval)."""
  stages = [evaluation(0)]
  if warmstart:
    stages += [*warmstart, evaluation(0)]
  for it in range(1, iterations + 1):
    stages += [*phases(it), evaluation(it)]
  return stages


class Schedule:
  """A run's stages and what a cursor (stage index, step in stage) means.

  The cursor is the one position counter: the metrics' step (train steps
  taken) and the checkpoint's step (schedule units done: steps plus stage
  ends) derive from it.
  """

  def __init__(self, stages: Sequence[Stage]):
    if not stages:
      raise ValueError("a recipe's schedule has no stages.")
    self.stages = list(stages)
    warm = [i for i, st in enumerate(self.stages) if st.optimizer == "sft"]
    self.last_warmstart = warm[-1] if warm else None

  def __len__(self) -> int:
    return len(self.stages)

  def units_done(self, cursor: tuple[int, int]) -> int:
    """Schedule units before `cursor` (a step is one, a stage end one more)."""
    index, step = cursor
    return sum(st.steps + 1 for st in self.stages[:index]) + step

  def train_steps_done(self, cursor: tuple[int, int]) -> int:
    """Train steps before `cursor`: the metrics' step."""
    index, step = cursor
    done = sum(st.steps for st in self.stages[:index] if st.trains)
    if index < len(self.stages) and self.stages[index].trains:
      done += step
    return done

  def eval_key(self, index: int) -> str:
    """Where the evaluation at stage `index` is recorded: init, after_warmstart, iterN."""
    stage = self.stages[index]
    if stage.iteration > 0:
      return f"iter{stage.iteration}"
    earlier = sum(st.kind == stage.kind for st in self.stages[:index])
    return "after_warmstart" if earlier else "init"
