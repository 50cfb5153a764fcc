"""The decode loop: one `lax.while_loop` over new tokens with a static KV cache.

Model-agnostic: it gets a `step_fn(tokens [R], cache) -> (logits [R, V], cache)`
closure and the logits of the last prompt position. The loop exits as soon as
every row has finished (EOS, a stop sequence or the length limit), so a batch
whose rows all end early costs only as many steps as its longest row; rows that
end earlier are padded (`pad_id`, log-prob 0) while the others go on.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from evejax.sampling import params as params_lib
from evejax.sampling.params import SamplingParams
from evejax.sampling.select import sample_tokens

StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


@flax.struct.dataclass
class _State:
  step: jax.Array      # int32 scalar: tokens generated so far
  tokens: jax.Array    # int32 [R, N]
  logprobs: jax.Array  # f32 [R, N]
  lengths: jax.Array   # int32 [R]
  finish: jax.Array    # int32 [R]; 0 while running
  window: jax.Array    # int32 [R, W]; last W tokens, for stop sequences (W >= 1)


def _stop_match(window: jax.Array, count: jax.Array,
                sampling: SamplingParams) -> jax.Array:
  """[R] bool: the tokens so far end with one of the stop sequences."""
  hit = jnp.zeros(window.shape[:1], bool)
  width = window.shape[1]
  for seq in sampling.stop_sequences:
    tail = window[:, width - len(seq):]
    seq_hit = jnp.all(tail == jnp.asarray(seq, jnp.int32)[None], axis=-1)
    hit |= seq_hit & (count >= len(seq))
  return hit


def finish_after(tok: jax.Array, window: jax.Array, count: jax.Array,
                 alive: jax.Array, finish: jax.Array,
                 sampling: SamplingParams) -> jax.Array:
  """[R] finish reasons once the alive rows emitted `tok` as token `count`.

  `window` ends with `tok`; `count` (tokens so far, `tok` included) is one
  number for every row or one per row.
  """
  is_eos = alive & jnp.isin(tok, jnp.asarray(sampling.eos_ids or (-1,), jnp.int32))
  is_stop = alive & ~is_eos & _stop_match(window, count, sampling)
  is_len = alive & ~is_eos & ~is_stop & (count >= sampling.max_new_tokens)
  return jnp.select(
      [is_eos, is_stop, is_len],
      [params_lib.FINISH_EOS, params_lib.FINISH_STOP, params_lib.FINISH_LENGTH],
      finish).astype(jnp.int32)


def _record(state: _State, tok: jax.Array, lp: jax.Array,
            sampling: SamplingParams) -> tuple[_State, jax.Array]:
  """Writes step `state.step`'s tokens and updates which rows are finished."""
  i = state.step
  alive = state.finish == 0
  tok = jnp.where(alive, tok, sampling.pad_id).astype(jnp.int32)
  lp = jnp.where(alive, lp, 0.0).astype(jnp.float32)
  window = jnp.concatenate([state.window[:, 1:], tok[:, None]], axis=1)
  count = i + 1
  finish = finish_after(tok, window, count, alive, state.finish, sampling)
  new = _State(
      step=count,
      tokens=jax.lax.dynamic_update_slice(state.tokens, tok[:, None], (0, i)),
      logprobs=jax.lax.dynamic_update_slice(state.logprobs, lp[:, None], (0, i)),
      lengths=jnp.where(finish != state.finish, count, state.lengths),
      finish=finish,
      window=window)
  return new, tok


def stage_ends(max_new_tokens: int, first_stage: int) -> tuple[int, ...]:
  """New-token counts at which the cache grows: first_stage, doubling, N.

  0 (or first_stage >= N) gives one stage: the whole cache from the start.
  """
  if first_stage <= 0 or first_stage >= max_new_tokens:
    return (max_new_tokens,)
  ends = [first_stage]
  while ends[-1] * 2 < max_new_tokens:
    ends.append(ends[-1] * 2)
  return tuple(ends) + (max_new_tokens,)


def decode_loop(step_fn: StepFn, first_logits: jax.Array, cache: Any,
                keys: jax.Array, sampling: SamplingParams, *,
                ends: tuple[int, ...] | None = None,
                grow: Callable[[Any, int], Any] | None = None):
  """Samples up to `sampling.max_new_tokens` tokens per row.

  Staged caches: attention reads every slot of the cache, used or not, so a
  cache sized for N new tokens makes early steps pay for all N. With
  `ends` = (n_1, ..., N) the loop starts on a cache with room for n_1 new
  tokens and, while some row is still running, `grow`s it by n_{i+1} - n_i
  slots before stage i+1; a batch that finishes early never pays for the
  larger caches.

  Args:
    step_fn: feeds one token per row, returns next logits and the new cache.
    first_logits: [R, V] logits after the prompt (the first token's).
    cache: the model's cache after prefill, R rows, with room for ends[0]
      new tokens.
    keys: [R] per-row keys; step i of row r uses fold_in(keys[r], i).
    sampling: static.
    ends: static stage ends (default: one stage of N).
    grow: (cache, extra_slots) -> a larger cache; needed with several stages.

  Returns:
    (tokens int32 [R, N], logprobs f32 [R, N], lengths int32 [R],
     finish_reason int32 [R], steps int32 [] (tokens picked per row: the
     loop's length)), and the final cache with one stage (so a
    donated cache can be updated in place) or None with several.
  """
  rows = first_logits.shape[0]
  n = sampling.max_new_tokens
  ends = tuple(ends or (n,))
  if ends[-1] != n or list(ends) != sorted(set(ends)) or (len(ends) > 1 and grow is None):
    raise ValueError(f"decode_loop: stage ends {ends} must increase to "
                     f"max_new_tokens={n}, with `grow` for several stages.")
  width = max([len(s) for s in sampling.stop_sequences] + [1])
  state = _State(
      step=jnp.zeros((), jnp.int32),
      tokens=jnp.full((rows, n), sampling.pad_id, jnp.int32),
      logprobs=jnp.zeros((rows, n), jnp.float32),
      lengths=jnp.zeros((rows,), jnp.int32),
      finish=jnp.zeros((rows,), jnp.int32),
      window=jnp.full((rows, width), -1, jnp.int32))

  def pick(logits, step):
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
    return sample_tokens(logits, step_keys, sampling)

  tok, lp = pick(first_logits, state.step)
  state, tok = _record(state, tok, lp, sampling)

  def running(state):
    return (state.step < n) & jnp.any(state.finish == 0)

  def body(carry):
    state, cache, tok = carry
    logits, cache = step_fn(tok, cache)
    tok, lp = pick(logits, state.step)
    state, tok = _record(state, tok, lp, sampling)
    return state, cache, tok

  def run_stage(carry, end):
    cond = lambda c: running(c[0]) & (c[0].step < end)
    return jax.lax.while_loop(cond, body, carry)

  def later_stages(i, carry):
    """Stages i.. (i >= 1), entered only while a row is running."""
    if i == len(ends):
      return carry[0]
    def go(carry):
      state, cache, tok = carry
      carry = run_stage((state, grow(cache, ends[i] - ends[i - 1]), tok), ends[i])
      return later_stages(i + 1, carry)
    return jax.lax.cond(running(carry[0]), go, lambda c: c[0], carry)

  carry = run_stage((state, cache, tok), ends[0])
  outputs = lambda s: (s.tokens, s.logprobs, s.lengths, s.finish, s.step)
  if len(ends) == 1:
    return outputs(carry[0]), carry[1]
  return outputs(later_stages(1, carry)), None
