"""Pick the next token from logits: greedy, temperature, top-k, top-p.

Pure and jit-friendly; `sampling` is static. Truncation is done by gathering
candidates (`lax.top_k` / a sort) and drawing an index among them, so exactly
the allowed tokens can be emitted even when logits tie at the cut-off.
Order of operations as in transformers' warpers: temperature, top-k, then
top-p on the top-k-renormalised distribution.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from evejax.sampling.params import SamplingParams


def row_keys(rng: jax.Array, batch: int) -> jax.Array:
  """One key per row: a [B] key array passes through, a single key is split."""
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)  # raw uint32 keys (jax.random.PRNGKey)
  if rng.shape == (batch,):
    return rng
  if rng.shape == ():
    return jax.random.split(rng, batch)
  raise ValueError(
      f"sample_tokens: rng has shape {rng.shape}; pass one key or one per row "
      f"(shape ({batch},)).")


def _candidates(scaled: jax.Array, sampling: SamplingParams):
  """Allowed tokens per row: (logits [B, K] with -inf for excluded, ids [B, K]).

  Returns ids=None when nothing is truncated (all V tokens allowed).
  """
  vocab = scaled.shape[-1]
  top_k = min(sampling.top_k, vocab) if sampling.top_k else 0
  if top_k == 0 and sampling.top_p >= 1.0:
    return scaled, None
  if top_k:
    vals, ids = jax.lax.top_k(scaled, top_k)
  else:
    ids = jnp.argsort(-scaled, axis=-1)  # descending, stable
    vals = jnp.take_along_axis(scaled, ids, axis=-1)
  if sampling.top_p < 1.0:
    probs = jax.nn.softmax(vals, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token is kept when
    # the mass before it is still below top_p (so the first always is).
    before = jnp.cumsum(probs, axis=-1) - probs
    vals = jnp.where(before < sampling.top_p, vals, -jnp.inf)
  return vals, ids.astype(jnp.int32)


def sample_tokens(logits: jax.Array, rng: jax.Array,
                  sampling: SamplingParams) -> tuple[jax.Array, jax.Array]:
  """Samples one token per row.

  Args:
    logits: [B, V] next-token logits (any float dtype; computed in fp32).
    rng: one key, or a [B] key array (per-row reproducible randomness).
    sampling: static parameters; see `SamplingParams` for `logprob_mode`.

  Returns:
    tokens int32 [B] and their log-probs f32 [B].
  """
  logits = logits.astype(jnp.float32)
  scaled = logits / jnp.float32(sampling.temperature)
  if sampling.greedy:
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    sample_lp = jnp.zeros(tokens.shape, jnp.float32)
  else:
    keys = row_keys(rng, logits.shape[0])
    cand, ids = _candidates(scaled, sampling)
    choice = jax.vmap(jax.random.categorical)(keys, cand).astype(jnp.int32)
    if ids is None:
      tokens = choice
    else:
      tokens = jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]
    if sampling.logprob_mode == "sampling":
      sample_lp = _pick(jax.nn.log_softmax(cand, axis=-1), choice)
  if sampling.logprob_mode == "sampling":
    return tokens, sample_lp
  base = scaled if sampling.logprob_mode == "policy" else logits
  return tokens, _pick(jax.nn.log_softmax(base, axis=-1), tokens)


def _pick(x: jax.Array, idx: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x, idx[:, None], axis=-1)[:, 0]
