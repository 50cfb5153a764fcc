"""Advantage estimators: group-relative (GRPO, Dr.GRPO) and an EMA baseline.

Group-relative estimators follow the arithmetic of verl/EasyR1, which EVE and
MM-Zero trained with (reference/METHODS.md):

  A_i = (r_i - mean_g) / (std_g + eps),  std with Bessel's correction (ddof=1)

* A group of one has no peers: it gets mean 0 and std 1, so A = r / (1 + eps)
  ('grpo') or A = r ('dr_grpo').
* A group whose rewards are all equal (and has more than one member) carries no
  learning signal: its advantages are exactly 0, and it is counted in
  ``stats['zero_variance_groups']`` so a recipe can report wasted samples.
* Dr.GRPO drops the division by the std.

Rewards are laid out group-major: ``rewards.reshape(-1, group_size)`` gives one
row per prompt, which is how the sampler emits groups.

The EMA baseline is EvoLMM's per-role baseline for REINFORCE. Its state is a
pytree (``EmaBaseline``), checkpointed with the rest of the recipe state.
Choice documented here (the reference code is not public): the first update
*initialises* the baseline to the observed reward mean instead of decaying from
0, because decaying from 0 biases every early advantage upwards by the reward
scale. ``ema_advantages`` uses the baseline from *before* the current batch, so
a sample never lowers its own advantage; on the very first batch (baseline not
yet initialised) it uses the batch mean, i.e. centred rewards.
"""

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


def group_advantages(
    rewards: Array,
    group_size: int,
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> tuple[Array, dict[str, Array]]:
  """Group-relative advantages (GRPO; Dr.GRPO with ``normalize_std=False``).

  Args:
    rewards: [N] rewards, group-major (N = num_groups * group_size).
    group_size: samples per prompt; a static Python int.
    normalize_std: divide by (group std with ddof=1 + eps).
    eps: added to the std before dividing.

  Returns:
    (advantages [N] float32, stats) where stats holds 'zero_variance_groups'
    (count of groups with more than one member and all-equal rewards),
    'zero_variance_fraction', 'reward_mean', 'reward_std' and 'group_std_mean'.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim != 1:
    raise ValueError(f"rewards must be 1-D [N], got shape {rewards.shape}.")
  if group_size < 1 or rewards.shape[0] % group_size:
    raise ValueError(
        f"group_size={group_size} must be >= 1 and divide the number of "
        f"rewards ({rewards.shape[0]}); rewards are laid out group-major.")
  groups = rewards.reshape(-1, group_size)
  num_groups = groups.shape[0]
  if group_size == 1:
    # No peers: the verl convention is mean 0, std 1.
    mean = jnp.zeros((num_groups, 1), jnp.float32)
    std = jnp.ones((num_groups, 1), jnp.float32)
    zero_var = jnp.zeros((num_groups,), bool)
  else:
    mean = groups.mean(axis=1, keepdims=True)
    std = groups.std(axis=1, ddof=1, keepdims=True)
    zero_var = groups.max(axis=1) == groups.min(axis=1)
  centred = groups - mean
  adv = centred / (std + eps) if normalize_std else centred
  # Equal rewards must give exactly 0, not rounding noise of (r - mean).
  adv = jnp.where(zero_var[:, None], 0.0, adv)
  count = zero_var.sum().astype(jnp.int32)
  stats = {
      "zero_variance_groups": count,
      "zero_variance_fraction": count.astype(jnp.float32) / num_groups,
      "reward_mean": rewards.mean(),
      "reward_std": rewards.std(),
      "group_std_mean": std.mean(),
  }
  return adv.reshape(-1), stats


def grpo_advantages(rewards: Array, group_size: int, *, eps: float = 1e-6):
  """GRPO: (r - group mean) / (group std + eps)."""
  return group_advantages(rewards, group_size, normalize_std=True, eps=eps)


def dr_grpo_advantages(rewards: Array, group_size: int, *, eps: float = 1e-6):
  """Dr.GRPO: r - group mean (``eps`` is accepted for a uniform signature)."""
  return group_advantages(rewards, group_size, normalize_std=False, eps=eps)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., tuple[Array, dict]]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
}


def get_advantage_estimator(name: str) -> Callable[..., tuple[Array, dict]]:
  """Returns the group estimator registered under ``name``."""
  try:
    return ADVANTAGE_ESTIMATORS[name]
  except KeyError:
    raise ValueError(
        f"Unknown advantage estimator {name!r}; valid names: "
        f"{sorted(ADVANTAGE_ESTIMATORS)}.") from None


@flax.struct.dataclass
class EmaBaseline:
  """State of an exponential-moving-average reward baseline (one per role)."""
  value: Array
  initialized: Array

  @classmethod
  def create(cls) -> "EmaBaseline":
    return cls(value=jnp.zeros((), jnp.float32),
               initialized=jnp.zeros((), bool))


def ema_update(baseline: EmaBaseline, reward_mean: Array,
               momentum: float = 0.9) -> EmaBaseline:
  """b <- m * b + (1 - m) * reward_mean; the first update sets b = the mean."""
  x = jnp.asarray(reward_mean, jnp.float32)
  decayed = momentum * baseline.value + (1.0 - momentum) * x
  return EmaBaseline(value=jnp.where(baseline.initialized, decayed, x),
                     initialized=jnp.ones((), bool))


def ema_advantages(rewards: Array, baseline: EmaBaseline,
                   momentum: float = 0.9, valid: Array | None = None
                   ) -> tuple[Array, EmaBaseline]:
  """REINFORCE advantages r - b against the pre-batch baseline, and new state.

  Args:
    rewards: rewards of this update's samples (any shape).
    baseline: the role's state before this batch.
    momentum: EMA momentum.
    valid: which rewards are samples (bool, like rewards); None = all. Rows
      that only pad a batch to its bucket must not move the baseline.

  Returns:
    (rewards - b, updated baseline). Before the first update b is the batch
    mean, so the first advantages are centred rewards.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  if valid is None:
    mean = rewards.mean()
  else:
    w = jnp.asarray(valid, jnp.float32)
    mean = (rewards * w).sum() / jnp.maximum(w.sum(), 1.0)
  b = jnp.where(baseline.initialized, baseline.value, mean)
  return rewards - b, ema_update(baseline, mean, momentum)
