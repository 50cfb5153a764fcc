"""Reward functions named in config: a short name or an import path.

A config names a reward as a registered short name (``'eve.solver'``) or as an
import path, ``'package.module:function'`` (or ``'package.module.function'``),
so a researcher adds a reward in their own module without editing evejax.
Names are resolved to module-level callables, which (unlike closures) can be
sent to worker processes.

Also home of ``Reward``, the value every built-in reward returns.
"""

import dataclasses
import importlib
from typing import Any, Callable, Mapping

REWARDS: dict[str, str] = {
    "eve.challenger": "evejax.rewards.eve:challenger_rewards",
    "eve.solver": "evejax.rewards.eve:solver_reward",
    "mmzero.proposer": "evejax.rewards.mmzero:proposer_rewards",
    "mmzero.coder": "evejax.rewards.mmzero:coder_reward",
    "mmzero.solver": "evejax.rewards.mmzero:solver_reward",
    "evolmm.solver": "evejax.rewards.evolmm:solver_rewards",
    "evolmm.proposer": "evejax.rewards.evolmm:proposer_reward",
}


@dataclasses.dataclass(frozen=True)
class Reward:
  """A scalar reward, why it has that value, and its named components."""
  value: float
  reason: str = "ok"
  parts: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _split(path: str) -> tuple[str, str]:
  if ":" in path:
    module, _, attr = path.partition(":")
  else:
    module, _, attr = path.rpartition(".")
  return module, attr


def resolve(name_or_path: str) -> Callable[..., Any]:
  """Returns the reward callable for a registered name or an import path.

  Raises:
    ValueError: with one message naming the reward and what to fix when the
      name is neither registered nor importable, or is not callable.
  """
  if not isinstance(name_or_path, str) or not name_or_path.strip():
    raise ValueError(f"Reward name must be a non-empty string, got "
                     f"{name_or_path!r}; use one of {sorted(REWARDS)} or "
                     "'package.module:function'.")
  path = REWARDS.get(name_or_path, name_or_path)
  module_name, attr = _split(path)
  if not module_name or not attr:
    raise ValueError(
        f"Reward {name_or_path!r} is not a registered name ({sorted(REWARDS)}) "
        "nor an import path; write it as 'package.module:function'.")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(
        f"Reward {name_or_path!r}: cannot import module {module_name!r} ({e}). "
        f"Check the path, that the module is on PYTHONPATH, or use one of "
        f"{sorted(REWARDS)}.") from e
  fn = getattr(module, attr, None)
  if fn is None:
    raise ValueError(f"Reward {name_or_path!r}: module {module_name!r} has no "
                     f"attribute {attr!r}; check the function name.")
  if not callable(fn):
    raise ValueError(f"Reward {name_or_path!r}: {module_name}.{attr} is a "
                     f"{type(fn).__name__}, not a function.")
  return fn
