"""Policy losses, KL estimators and loss aggregation: pure jax.numpy functions.

Everything here works on per-token log-probabilities ``[B, T]`` of the sampled
completion tokens (or on logits ``[B, T, V]`` for the full-vocabulary terms) and
a completion mask ``[B, T]``; nothing knows about models. The arithmetic is that
of verl/EasyR1, which EVE and MM-Zero trained with (reference/METHODS.md):

* log-ratio ``logp - old_logp`` clamped to +-``log_ratio_clamp`` before
  ``exp``; PPO clip with separate low/high epsilons; dual-clip (on by default,
  c = 3): for negative advantages the token loss is
  ``min(-A * c, max(-A * ratio, -A * clip(ratio)))``.
* KL estimators k1, k2, k3 (= "low_var_kl", with its two clamps), aggregated
  like the policy loss and added by the learner with its coefficient.

Aggregation modes (``AGGREGATIONS``), each a (numerator, denominator) pair so a
learner can accumulate gradients over micro-batches EXACTLY:

  ========================  ==========================  ===================
  mode                      numerator                   denominator
  ========================  ==========================  ===================
  token-mean                sum of masked token values  number of tokens
  seq-mean-token-mean       sum over rows of row means  non-empty rows
  seq-mean-token-sum-norm   sum of row sums / constant  non-empty rows
  ========================  ==========================  ===================

The full-batch value is ``sum(numerators) / sum(denominators)``. Denominators
depend only on masks, never on parameters, so a learner may (a) compute the
total denominator first and differentiate ``numerator / total`` per micro-batch,
or (b) accumulate gradients of the numerators and divide once at the end. Both
equal the gradient of the full-batch loss. Rows whose mask is all zero are
padding and count in no denominator. For 'seq-mean-token-sum-norm' pass the
same ``norm_constant`` to every micro-batch (the default, the mask's length T,
differs between length buckets).

Each loss comes as ``X_terms(...) -> (numerator, denominator, sums)`` and
``X(...) -> (loss, metrics)``; ``sums`` are metric numerators that add across
micro-batches (``merge_sums``) and ``finalize_metrics`` turns them into means.
Every number is a keyword argument carrying the published default.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_name(name: str, valid, what: str) -> None:
  if name not in valid:
    raise ValueError(f"Unknown {what} {name!r}; valid names: {sorted(valid)}.")


def safe_divide(numerator: Array, denominator: Array) -> Array:
  """numerator / denominator, and 0 where the denominator is 0 (no tokens)."""
  ok = denominator > 0
  return jnp.where(ok, numerator / jnp.where(ok, denominator, 1.0), 0.0)


def _masked(values: Array, mask: Array) -> Array:
  # where, not multiply: padded positions may hold inf/nan (e.g. -inf logps).
  return jnp.where(mask > 0, values * mask, 0.0)


def _token_mean(masked, mask, norm_constant):
  del norm_constant
  return masked.sum(), mask.sum()


def _seq_mean_token_mean(masked, mask, norm_constant):
  del norm_constant
  row_tokens = mask.sum(axis=-1)
  return (safe_divide(masked.sum(axis=-1), row_tokens).sum(),
          (row_tokens > 0).sum().astype(jnp.float32))


def _seq_mean_token_sum_norm(masked, mask, norm_constant):
  constant = masked.shape[-1] if norm_constant is None else norm_constant
  return (masked.sum() / constant,
          (mask.sum(axis=-1) > 0).sum().astype(jnp.float32))


# name -> fn(masked values, mask, norm_constant) -> (numerator, denominator).
AGGREGATIONS: dict[str, Callable] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate_terms(values: Array, mask: Array, mode: str = "token-mean",
                    norm_constant: float | None = None) -> tuple[Array, Array]:
  """(numerator, denominator) of ``aggregate``; see the module docstring.

  Args:
    values: [B, T] per-token values.
    mask: [B, T] completion mask (0/1 or weights).
    mode: a key of AGGREGATIONS.
    norm_constant: divisor of 'seq-mean-token-sum-norm' (default T).

  Returns:
    Scalar float32 numerator and denominator.
  """
  _check_name(mode, AGGREGATIONS, "aggregation mode")
  values = jnp.asarray(values, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  return AGGREGATIONS[mode](_masked(values, mask), mask, norm_constant)


def aggregate(values: Array, mask: Array, mode: str = "token-mean",
              norm_constant: float | None = None) -> Array:
  """Reduces per-token values to a scalar like the policy loss (0 if empty)."""
  return safe_divide(*aggregate_terms(values, mask, mode, norm_constant))


# ----------------------------------------------------------------------------
# Metric sums that add across micro-batches.

def merge_sums(a: dict[str, Array], b: dict[str, Array]) -> dict[str, Array]:
  """Combines two metric-sum dicts: keys ending in '_max' take the max."""
  return {k: (jnp.maximum(a[k], b[k]) if k.endswith("_max") else a[k] + b[k])
          for k in a}


def finalize_metrics(sums: dict[str, Array]) -> dict[str, Array]:
  """Turns sums into metrics: 'x_sum' / 'token_count' -> 'x'; '_max' kept."""
  count = sums["token_count"]
  out = {}
  for k, v in sums.items():
    if k.endswith("_sum"):
      out[k[:-4]] = safe_divide(v, count)
    elif k.endswith("_max"):
      out[k] = jnp.where(count > 0, v, 0.0)
  out["token_count"] = count
  return out


# ----------------------------------------------------------------------------
# Policy losses. Each returns per-token losses and per-token diagnostics.

def ppo_clip_token_losses(logp, old_logp, advantages, mask, *, clip_low=0.2,
                          clip_high=0.2, dual_clip=3.0, log_ratio_clamp=20.0):
  """Token-level PPO clip with optional dual clip (verl 'vanilla')."""
  del mask  # Token-level: no per-sequence reduction needed.
  log_ratio = jnp.clip(logp - old_logp, -log_ratio_clamp, log_ratio_clamp)
  ratio = jnp.exp(log_ratio)
  loss_unclipped = -advantages * ratio
  loss_clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  clipped = loss_clipped > loss_unclipped
  losses = jnp.maximum(loss_unclipped, loss_clipped)
  if dual_clip is None:
    dual = jnp.zeros_like(clipped)
  else:
    lower = -advantages * dual_clip
    dual = (advantages < 0) & (losses > lower)
    losses = jnp.where(advantages < 0, jnp.minimum(losses, lower), losses)
  return losses, {"ratio": ratio, "clipped": clipped, "dual_clipped": dual,
                  "neg_log_ratio": -log_ratio}


def gspo_token_losses(logp, old_logp, advantages, mask, *, clip_low=3e-4,
                      clip_high=4e-4, dual_clip=None, log_ratio_clamp=20.0):
  """GSPO: one importance ratio per sequence (geometric mean of token ratios).

  The ratio's value is exp(mean_t log-ratio) for every token of a row; its
  gradient flows through each token's own log-prob (stop-gradient trick), as
  in the GSPO paper. Clip epsilons are much smaller than PPO's; dual clip is
  not part of the method and is ignored. Use 'seq-mean-token-mean'.
  """
  del dual_clip
  mask = jnp.asarray(mask, jnp.float32)
  token_log_ratio = jnp.where(mask > 0, logp - old_logp, 0.0)
  seq_log_ratio = safe_divide(token_log_ratio.sum(-1), mask.sum(-1))
  log_ratio = (jax.lax.stop_gradient(seq_log_ratio)[:, None]
               + logp - jax.lax.stop_gradient(logp))
  log_ratio = jnp.clip(log_ratio, -log_ratio_clamp, log_ratio_clamp)
  ratio = jnp.exp(log_ratio)
  loss_unclipped = -advantages * ratio
  loss_clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  clipped = loss_clipped > loss_unclipped
  return jnp.maximum(loss_unclipped, loss_clipped), {
      "ratio": ratio, "clipped": clipped,
      "dual_clipped": jnp.zeros_like(clipped),
      "neg_log_ratio": -jnp.clip(logp - old_logp, -log_ratio_clamp,
                                 log_ratio_clamp)}


POLICY_LOSSES: dict[str, Callable] = {
    "ppo_clip": ppo_clip_token_losses,
    "gspo": gspo_token_losses,
}


def policy_loss_terms(logp: Array, old_logp: Array, advantages: Array,
                      mask: Array, *, loss_type: str = "ppo_clip",
                      clip_low: float = 0.2, clip_high: float = 0.2,
                      dual_clip: float | None = 3.0, agg: str = "token-mean",
                      norm_constant: float | None = None,
                      log_ratio_clamp: float = 20.0):
  """(numerator, denominator, metric sums) of ``policy_loss``."""
  _check_name(loss_type, POLICY_LOSSES, "policy loss")
  _check_name(agg, AGGREGATIONS, "aggregation mode")
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"dual_clip must be > 1 or None (off), got {dual_clip}.")
  logp = jnp.asarray(logp, jnp.float32)
  old_logp = jnp.asarray(old_logp, jnp.float32)
  advantages = jnp.asarray(advantages, jnp.float32)
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  mask = jnp.asarray(mask, jnp.float32)
  losses, info = POLICY_LOSSES[loss_type](
      logp, old_logp, advantages, mask, clip_low=clip_low,
      clip_high=clip_high, dual_clip=dual_clip,
      log_ratio_clamp=log_ratio_clamp)
  num, den = aggregate_terms(losses, mask, agg, norm_constant)
  on = mask > 0
  sums = {
      "token_count": mask.sum(),
      "clip_fraction_sum": _masked(
          info["clipped"].astype(jnp.float32), mask).sum(),
      "dual_clip_fraction_sum": _masked(
          info["dual_clipped"].astype(jnp.float32), mask).sum(),
      "approx_kl_sum": _masked(info["neg_log_ratio"], mask).sum(),
      "ratio_mean_sum": _masked(info["ratio"], mask).sum(),
      "ratio_max": jnp.max(jnp.where(on, info["ratio"], -jnp.inf)),
  }
  return num, den, sums


def policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array,
                **kwargs) -> tuple[Array, dict[str, Array]]:
  """Clipped policy-gradient loss.

  Args:
    logp: [B, T] log pi(token) under the current parameters.
    old_logp: [B, T] log-probs under the sampling policy.
    advantages: [B] (per sequence) or [B, T].
    mask: [B, T] completion mask.
    **kwargs: loss_type='ppo_clip' ('gspo'), clip_low=0.2, clip_high=0.2,
      dual_clip=3.0 (None = off), agg='token-mean', norm_constant=None,
      log_ratio_clamp=20.0.

  Returns:
    (loss, metrics) with metrics clip_fraction (tokens where the clipped branch
    is active), dual_clip_fraction, approx_kl (token mean of old - new
    log-prob, from the clamped log-ratio), ratio_mean, ratio_max, token_count.
  """
  num, den, sums = policy_loss_terms(logp, old_logp, advantages, mask, **kwargs)
  return safe_divide(num, den), finalize_metrics(sums)


# ----------------------------------------------------------------------------
# KL estimators on sampled tokens (log pi, log pi_ref).

def _k1(logp, ref_logp, **_):
  return logp - ref_logp


def _abs(logp, ref_logp, **_):
  return jnp.abs(logp - ref_logp)


def _k2(logp, ref_logp, **_):
  return 0.5 * jnp.square(logp - ref_logp)


def _k3(logp, ref_logp, *, log_ratio_clamp=20.0, value_clamp=10.0):
  d = jnp.clip(ref_logp - logp, -log_ratio_clamp, log_ratio_clamp)
  return jnp.clip(jnp.exp(d) - d - 1.0, -value_clamp, value_clamp)


KL_ESTIMATORS: dict[str, Callable] = {
    "k1": _k1, "kl": _k1, "abs": _abs, "k2": _k2, "mse": _k2,
    "k3": _k3, "low_var_kl": _k3,
}


def kl_penalty(logp: Array, ref_logp: Array, kind: str = "low_var_kl", *,
               log_ratio_clamp: float = 20.0,
               value_clamp: float = 10.0) -> Array:
  """Per-token KL estimate [B, T]; aggregate it with ``aggregate``.

  k1 = logp - ref; k2 = 0.5 (logp - ref)^2; k3 = low_var_kl = exp(d) - d - 1
  with d = ref - logp clamped to +-log_ratio_clamp and the result clamped to
  +-value_clamp (the clamps apply to k3 only). The reference is frozen: no
  gradient flows into ``ref_logp``.
  """
  _check_name(kind, KL_ESTIMATORS, "KL estimator")
  logp = jnp.asarray(logp, jnp.float32)
  ref_logp = jax.lax.stop_gradient(jnp.asarray(ref_logp, jnp.float32))
  return KL_ESTIMATORS[kind](logp, ref_logp, log_ratio_clamp=log_ratio_clamp,
                             value_clamp=value_clamp)


# ----------------------------------------------------------------------------
# Full-vocabulary terms (fp32 log-softmax).

def token_kl_from_logits(logits_policy: Array, logits_ref: Array) -> Array:
  """Exact per-token KL(pi || pi_ref) over the vocabulary, [B, T]."""
  logq = jax.nn.log_softmax(logits_policy.astype(jnp.float32), axis=-1)
  logr = jax.nn.log_softmax(
      jax.lax.stop_gradient(logits_ref).astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(logq) * (logq - logr), axis=-1)


def full_vocab_kl(logits_policy: Array, logits_ref: Array, mask: Array, *,
                  agg: str = "token-mean",
                  norm_constant: float | None = None) -> Array:
  """KL(pi || pi_ref) averaged over completion tokens (EvoLMM's KL term)."""
  return aggregate(token_kl_from_logits(logits_policy, logits_ref), mask, agg,
                   norm_constant)


def _logp_entropy_values(logits, targets, temperature):
  z = logits.astype(jnp.float32) / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  expected = jnp.sum(jnp.exp(z - lse[..., None]) * z, axis=-1)   # E_p[z]
  picked = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
  return (picked - lse, lse - expected), (lse, expected)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def token_logp_entropy(logits: Array, targets: Array, temperature: float = 1.0
                       ) -> tuple[Array, Array]:
  """(log softmax(z)[targets], entropy of softmax(z)), z = logits / T; f32 [...].

  Equal to log_softmax + take_along_axis + `token_entropy`, with a hand-written
  gradient: dz = g_logp (onehot - p) - g_ent p (z - E_p[z]), one fused pass
  over [..., V] that keeps only the logits and two [...] vectors, where
  autodiff keeps several [..., V] f32 intermediates and scatters into a
  zero [..., V] for the gather.
  """
  return _logp_entropy_values(logits, targets, temperature)[0]


def _logp_entropy_fwd(logits, targets, temperature):
  out, (lse, expected) = _logp_entropy_values(logits, targets, temperature)
  return out, (logits, targets, lse, expected)


def _logp_entropy_bwd(temperature, res, g):
  logits, targets, lse, expected = res
  g_logp, g_ent = (x.astype(jnp.float32)[..., None] for x in g)
  z = logits.astype(jnp.float32) / temperature
  p = jnp.exp(z - lse[..., None])
  dz = -p * (g_logp + g_ent * (z - expected[..., None]))
  # The target's +g_logp as a scatter of one value per row: a [..., V] one-hot
  # select made XLA:CPU materialise two broadcast [..., V] operands.
  flat = dz.reshape(-1, z.shape[-1])
  flat = flat.at[jnp.arange(flat.shape[0]), targets.reshape(-1)].add(g_logp.reshape(-1))
  return (flat.reshape(z.shape) / temperature).astype(logits.dtype), None


token_logp_entropy.defvjp(_logp_entropy_fwd, _logp_entropy_bwd)


def token_logp(logits: Array, targets: Array, temperature: float = 1.0) -> Array:
  """log softmax(logits / T)[targets], f32 [...], without a [..., V] log-softmax."""
  z = logits.astype(jnp.float32) / temperature
  picked = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(z, axis=-1)


def token_entropy(logits: Array) -> Array:
  """Per-token entropy of the softmax over the vocabulary, [B, T]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def entropy_from_logits(logits: Array, mask: Array, *, agg: str = "token-mean",
                        norm_constant: float | None = None) -> Array:
  """Policy entropy aggregated over completion tokens."""
  return aggregate(token_entropy(logits), mask, agg, norm_constant)


def adaptive_kl_update(beta, kl, target: float = 0.02, rate: float = 0.1,
                       lo: float = 1e-8, hi: float = 100.0):
  """EvoLMM: beta <- clip(beta * exp(rate * (kl - target) / target), lo, hi)."""
  return jnp.clip(beta * jnp.exp(rate * (kl - target) / target), lo, hi)


# ----------------------------------------------------------------------------
# REINFORCE and SFT.

def reinforce_loss_terms(logp: Array, mask: Array, reward: Array,
                         baseline: Array, *, agg: str = "seq-mean-token-mean",
                         norm_constant: float | None = None):
  """(numerator, denominator, metric sums) of ``reinforce_loss``."""
  logp = jnp.asarray(logp, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  adv = (jnp.asarray(reward, jnp.float32)
         - jnp.asarray(baseline, jnp.float32)) * jnp.ones(logp.shape[:1])
  adv = jax.lax.stop_gradient(adv)
  num, den = aggregate_terms(-adv[:, None] * logp, mask, agg, norm_constant)
  sums = {"token_count": mask.sum(), "nll_sum": _masked(-logp, mask).sum()}
  return num, den, sums


def reinforce_loss(logp: Array, mask: Array, reward: Array, baseline: Array,
                   **kwargs) -> tuple[Array, dict[str, Array]]:
  """EvoLMM's REINFORCE: mean over samples of (r - b) * NLL_mean(completion).

  Args:
    logp: [B, T] log-probs of the completion tokens.
    mask: [B, T] completion mask.
    reward: [B] or scalar rewards.
    baseline: scalar or [B] baseline (treated as a constant).
    **kwargs: agg='seq-mean-token-mean' (the per-completion NLL mean),
      norm_constant.

  Returns:
    (loss, metrics) with metrics 'nll' (token mean) and 'token_count'.
  """
  num, den, sums = reinforce_loss_terms(logp, mask, reward, baseline, **kwargs)
  return safe_divide(num, den), finalize_metrics(sums)


def sft_loss_terms(logp: Array, mask: Array, *, agg: str = "token-mean",
                   norm_constant: float | None = None):
  """(numerator, denominator, metric sums) of ``sft_loss``."""
  logp = jnp.asarray(logp, jnp.float32)
  num, den = aggregate_terms(-logp, mask, agg, norm_constant)
  mask = jnp.asarray(mask, jnp.float32)
  return num, den, {"token_count": mask.sum(),
                    "nll_sum": _masked(-logp, mask).sum()}


def sft_loss(logp: Array, mask: Array, **kwargs) -> tuple[Array, dict]:
  """Cross-entropy (negative log-likelihood) on completion tokens."""
  num, den, sums = sft_loss_terms(logp, mask, **kwargs)
  return safe_divide(num, den), finalize_metrics(sums)
