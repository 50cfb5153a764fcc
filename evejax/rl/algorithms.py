"""Training algorithms the learner hosts, registered by name.

`config.train.algorithm` names a role's RL algorithm — a registered name
("grpo", "reinforce") or an import path "pkg.module:Class" of a subclass of
`Algorithm` outside evejax — and "sft" is always there for warm starts. The
learner owns what every algorithm shares (micro-batches accumulated exactly,
the optimizer, skipped non-finite steps, shardings); an algorithm says only
what is its own:

  config_block    the train-config block it reads ("loss" for GRPO; "reinforce"
                  for EvoLMM's REINFORCE); a block exists only in the configs
                  whose algorithm declares it, with `default_config` defaults
  reference       None, "logprobs" (a scoring pass of the reference policy fills
                  batch.ref_logp before the step) or "params" (the loss runs the
                  reference model itself: a full-vocabulary KL)
  aggregation     the (mode, norm constant) of its batch denominator, see
                  `evejax.rl.losses.aggregate_terms`
  init_state      extra state carried in the train state and checkpointed with
                  it (REINFORCE: the EMA baseline and the adaptive KL beta);
                  algorithms without one carry nothing
  batch_fields    host side: a role's rewards (group-major) -> the TrainBatch
                  fields the loss reads (`row_fields`) and host metrics (GRPO:
                  advantages from the estimator `loss.advantage` names)
  prepare/finish  inside the compiled step, before the loss and after the update
                  (a skipped non-finite step keeps the old extra state)
  loss            one micro-batch's (loss share, metric sums): shares and sums
                  added over micro-batches give the whole batch's values

Each algorithm reads its config block once, in its constructor.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.struct
import ml_collections
import numpy as np

from evejax.rl import advantages as adv_lib
from evejax.rl import losses

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LossContext:
  """What the learner gives an algorithm's loss for one micro-batch.

  logprobs(params, mb, temperature=T, with_entropy=False): the one scoring
  path (`learner.token_logprobs`; with LoRA the adapter over the backbone), at
  the rollouts' temperature unless another is given. hidden/unembed (the
  policy) and ref_hidden/ref_unembed (the reference, no gradient) with chunked
  let a loss that needs logits (a full-vocabulary KL) stay chunked over the
  sequence like the scoring path.
  """
  logprobs: Callable
  hidden: Callable
  unembed: Callable
  ref_hidden: Callable
  ref_unembed: Callable
  chunked: Callable
  temperature: float
  den: jax.Array          # the whole batch's denominator of this algorithm's aggregation
  tokens: jax.Array       # completion tokens in the whole batch (>= 1)
  state: PyTree | None    # this algorithm's extra state before the step


class Algorithm:
  """Base class; see the module docstring. Subclasses set what differs."""
  name: str = ""
  config_block: str | None = None
  reference: str | None = None
  row_fields: tuple[str, ...] = ()   # per-row TrainBatch fields the loss reads

  def __init__(self, cfg: ml_collections.ConfigDict):
    del cfg

  @staticmethod
  def default_config() -> dict | None:
    return None

  def aggregation(self) -> tuple[str, float | None]:
    return "token-mean", None

  def init_state(self) -> PyTree | None:
    return None

  def batch_fields(self, rewards: np.ndarray, group: int) -> tuple[dict, dict]:
    raise ValueError(f"algorithm {self.name!r} does not learn from rewards.")

  def prepare(self, state, batch):
    """(batch, state after the step unless it is skipped, metrics), before the loss."""
    return batch, state, {}

  def loss(self, ctx: LossContext, params, mb) -> tuple[jax.Array, dict]:
    raise NotImplementedError

  def finish(self, state, metrics: dict) -> PyTree:
    """The state after a finite step, from `prepare`'s state and the step's metrics."""
    return state


_REGISTRY: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
  """Class decorator: makes `cls` selectable as config.train.algorithm = cls.name."""
  _REGISTRY[cls.name] = cls
  return cls


def get(name: str) -> type[Algorithm]:
  """The algorithm class registered as `name`, or imported from "pkg.module:Class"."""
  if name in _REGISTRY:
    return _REGISTRY[name]
  module_name, sep, attr = name.partition(":")
  if not sep:
    raise ValueError(f"config.train.algorithm={name!r} is not a registered algorithm "
                     f"({sorted(_REGISTRY)}) nor an import path 'package.module:Class'.")
  try:
    cls = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"config.train.algorithm={name!r}: cannot import it ({e}).") from None
  if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
    raise ValueError(f"config.train.algorithm={name!r} is not a subclass of "
                     "evejax.rl.algorithms.Algorithm.")
  return cls


def by_config_block(block: str | None) -> type[Algorithm] | None:
  """The registered algorithm that owns config.train.<block>, if any."""
  return next((a for a in _REGISTRY.values() if block and a.config_block == block), None)


def registered() -> list[str]:
  return sorted(_REGISTRY)


# ----------------------------------------------------------------------------


@register
class SFT(Algorithm):
  """Cross-entropy on the completion tokens, at T=1 whatever the role samples at."""
  name = "sft"

  def __init__(self, cfg):
    super().__init__(cfg)
    self._agg = (cfg.loss.agg, cfg.loss.norm_constant or None)

  def aggregation(self):
    return self._agg

  def loss(self, ctx, params, mb):
    # The data's likelihood at T=1: the role's temperature is how it samples,
    # not what the targets mean.
    logp, ent = ctx.logprobs(params, mb, temperature=1.0, with_entropy=True)
    m = mb.loss_mask.astype(jnp.float32)
    num, _, sums = losses.sft_loss_terms(logp, m, agg=self._agg[0], norm_constant=self._agg[1])
    loss = num / ctx.den
    return loss, dict(sums, loss=loss, entropy_sum=(ent * m).sum(),
                      token_prob_sum=(jnp.exp(logp) * m).sum())


@register
class GRPO(Algorithm):
  """Clipped policy gradient on group-relative advantages, plus a KL term.

  Reads config.train.loss: policy loss ('ppo_clip' | 'gspo'), clip_low/high,
  dual_clip (0 = off), agg, norm_constant, kl_coef (0 = no reference pass),
  kl_estimator, entropy_coef, advantage (an `evejax.rl.advantages` estimator
  name) and adv_eps.
  """
  name = "grpo"
  config_block = "loss"
  row_fields = ("advantages",)

  def __init__(self, cfg):
    super().__init__(cfg)
    l = cfg.loss
    self.policy, self.clip = l.policy, (l.clip_low, l.clip_high)
    self.dual_clip = l.dual_clip or None
    self.agg, self.norm = l.agg, l.norm_constant or None
    self.kl_coef, self.kl_estimator = l.kl_coef, l.kl_estimator
    self.entropy_coef = l.entropy_coef
    self.estimator = adv_lib.get_advantage_estimator(l.advantage)
    self.adv_eps = l.adv_eps
    self.reference = "logprobs" if self.kl_coef > 0 else None

  def aggregation(self):
    return self.agg, self.norm

  def batch_fields(self, rewards, group):
    adv, stats = self.estimator(np.asarray(rewards, np.float32), group, eps=self.adv_eps)
    return ({"advantages": np.asarray(adv)},
            {f"adv/{k}": float(v) for k, v in stats.items()})

  def loss(self, ctx, params, mb):
    logp, ent = ctx.logprobs(params, mb, with_entropy=True)
    m = mb.loss_mask.astype(jnp.float32)
    old = jax.lax.stop_gradient(logp) if mb.old_logp is None else mb.old_logp
    num, _, sums = losses.policy_loss_terms(
        logp, old, mb.advantages, m, loss_type=self.policy, clip_low=self.clip[0],
        clip_high=self.clip[1], dual_clip=self.dual_clip, agg=self.agg,
        norm_constant=self.norm)
    pg = num / ctx.den
    loss = pg
    sums = dict(sums, entropy_sum=(ent * m).sum())
    if mb.ref_logp is not None:
      kl_tok = losses.kl_penalty(logp, mb.ref_logp, self.kl_estimator)
      kl = losses.aggregate_terms(kl_tok, m, self.agg, self.norm)[0] / ctx.den
      loss = loss + self.kl_coef * kl
      sums["kl"] = kl
    if self.entropy_coef:
      loss = loss - self.entropy_coef * losses.aggregate_terms(
          ent, m, self.agg, self.norm)[0] / ctx.den
    if mb.old_logp is not None:   # the sampler's log-probs: how far the trainer is from it
      sums["sampler_approx_kl_sum"] = ((mb.old_logp - logp) * m).sum()
    return loss, dict(sums, loss=loss, pg_loss=pg)


@flax.struct.dataclass
class ReinforceState:
  """REINFORCE's extra train state: the role's EMA reward baseline and KL beta."""
  baseline: adv_lib.EmaBaseline
  kl_beta: jax.Array   # f32 []


@register
class Reinforce(Algorithm):
  """EvoLMM: (r - b) * NLL_mean(completion) + beta * full-vocabulary KL(pi || ref).

  b is the role's EMA baseline from before the batch (on its first batch, the
  batch's mean reward; see `evejax.rl.advantages`); after a finite step the
  baseline moves towards the batch mean and beta adapts towards `kl_target`:
  beta <- clip(beta * exp(kl_rate * (KL - kl_target) / kl_target), min, max).
  The KL is exact over the vocabulary, averaged over completion tokens, against
  the reference params (the base model).
  """
  name = "reinforce"
  config_block = "reinforce"
  reference = "params"
  row_fields = ("rewards",)   # the advantages come from the baseline, in the step

  @staticmethod
  def default_config():
    return dict(
        agg="seq-mean-token-mean",   # mean over samples of the completion NLL mean
        baseline_momentum=0.9,
        kl_beta=1e-3, kl_target=0.02, kl_rate=0.1, kl_beta_min=1e-8, kl_beta_max=100.0)

  def __init__(self, cfg):
    super().__init__(cfg)
    r = cfg.reinforce
    self.agg, self.momentum = r.agg, r.baseline_momentum
    self.beta0, self.kl_target, self.kl_rate = r.kl_beta, r.kl_target, r.kl_rate
    self.beta_range = (r.kl_beta_min, r.kl_beta_max)

  def aggregation(self):
    return self.agg, None

  def init_state(self):
    return ReinforceState(baseline=adv_lib.EmaBaseline.create(),
                          kl_beta=jnp.asarray(self.beta0, jnp.float32))

  def batch_fields(self, rewards, group):
    del group  # one baseline for the role, not per group
    return {"rewards": np.asarray(rewards, np.float32)}, {}

  def prepare(self, state, batch):
    valid = batch.loss_mask.sum(-1) > 0   # rows padding the batch to a bucket have no loss
    adv, baseline = adv_lib.ema_advantages(batch.rewards, state.baseline, self.momentum, valid)
    w = valid.astype(jnp.float32)
    mean = (batch.rewards * w).sum() / jnp.maximum(w.sum(), 1.0)
    metrics = {"baseline": mean - (adv * w).sum() / jnp.maximum(w.sum(), 1.0),
               "kl_beta": state.kl_beta, "reward_mean": mean}
    return batch.replace(advantages=adv), state.replace(baseline=baseline), metrics

  def loss(self, ctx, params, mb):
    h = ctx.hidden(params, mb.inputs)
    h_ref = ctx.ref_hidden(mb.inputs)
    t = ctx.temperature

    def per_chunk(hc, hrc, tc):
      logits = ctx.unembed(params, hc).astype(jnp.float32) / t
      ref_logits = ctx.ref_unembed(hrc).astype(jnp.float32) / t
      logp_all = jax.nn.log_softmax(logits, axis=-1)
      logp = jnp.take_along_axis(logp_all, tc[..., None], axis=-1)[..., 0]
      return (logp, losses.token_entropy(logits),
              losses.token_kl_from_logits(logits, ref_logits))

    logp, ent, kl_tok = ctx.chunked(per_chunk, h, h_ref, mb.targets)
    m = mb.loss_mask.astype(jnp.float32)
    num, _, sums = losses.reinforce_loss_terms(logp, m, mb.advantages, 0.0, agg=self.agg)
    pg = num / ctx.den
    kl = (kl_tok * m).sum() / ctx.tokens
    loss = pg + ctx.state.kl_beta * kl
    return loss, dict(sums, loss=loss, pg_loss=pg, kl=kl, entropy_sum=(ent * m).sum())

  def finish(self, state, metrics):
    beta = losses.adaptive_kl_update(state.kl_beta, metrics["kl"], self.kl_target,
                                     self.kl_rate, *self.beta_range)
    return state.replace(kl_beta=beta)
