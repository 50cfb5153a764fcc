"""Slot decoding on the device: S rows that are refilled as their rows end.

The static loop (`loop.decode_loop`) decodes a chunk until its longest row
ends; rows that ended earlier keep their place and compute padding. Here the
decode state is a fixed array of S slots, each with its own row, token count
and finish state; `decode` runs until enough slots are free (or a step cap),
the host copies finished rows out, prefills the next prompts and `insert`s
them into the free slots, and decoding goes on.

The cache is a ring. The model's decode step writes every row's keys at one
shared slot `cache.index`; attention reads a row's keys through its mask, in
any order (each key was rotated at its own position when written), so a
cache of size L = longest prompt bucket + max_new_tokens can serve rows that
start at different steps: the write index wraps modulo L, and a prompt
inserted when the index is w lies at [w - T, w) (mod L) in its slot, its
T + max_new_tokens <= L entries never overlapping. Recurrent and convolution
states (Qwen3.5) are per row and are copied as they are.

The same tokens as the static path: a row's key is fold_in(seed, global row
id) and its token i uses fold_in(key, i), whatever slot or step it runs in;
its logits differ only by the order of the masked sums over the cache.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from evejax import parallel
from evejax.sampling import loop as loop_lib
from evejax.sampling.params import SamplingParams
from evejax.sampling.select import sample_tokens

EMPTY = -1  # finish state of a slot that holds no row


@flax.struct.dataclass
class SlotState:
  """Per slot: its row and how far it got (S slots, N = max_new_tokens)."""
  row: jax.Array       # int32 [S]; global row id (prompt id * G + member)
  count: jax.Array     # int32 [S]; tokens the row has so far
  last: jax.Array      # int32 [S]; the token fed to the next step
  tokens: jax.Array    # int32 [S, N]; pad_id after the end
  logprobs: jax.Array  # f32 [S, N]
  lengths: jax.Array   # int32 [S]
  finish: jax.Array    # int32 [S]; 0 while running, EMPTY without a row
  window: jax.Array    # int32 [S, W]; the last W tokens, for stop sequences


def empty_state(slots: int, sampling: SamplingParams) -> SlotState:
  n = sampling.max_new_tokens
  width = max([len(s) for s in sampling.stop_sequences] + [1])
  return SlotState(
      row=jnp.zeros((slots,), jnp.int32), count=jnp.zeros((slots,), jnp.int32),
      last=jnp.full((slots,), sampling.pad_id, jnp.int32),
      tokens=jnp.full((slots, n), sampling.pad_id, jnp.int32),
      logprobs=jnp.zeros((slots, n), jnp.float32),
      lengths=jnp.zeros((slots,), jnp.int32),
      finish=jnp.full((slots,), EMPTY, jnp.int32),
      window=jnp.full((slots, width), -1, jnp.int32))


def _pick(logits, state: SlotState, seed, sampling: SamplingParams):
  """Each slot's token `count` drawn with fold_in(fold_in(seed, row), count)."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(seed, state.row)
  keys = jax.vmap(jax.random.fold_in)(keys, state.count)
  return sample_tokens(logits, keys, sampling)


def _record(state: SlotState, tok, lp, sampling: SamplingParams) -> SlotState:
  """Writes each running slot's token at its own count; ends rows that finish."""
  alive = state.finish == 0
  tok = jnp.where(alive, tok, sampling.pad_id).astype(jnp.int32)
  lp = jnp.where(alive, lp, 0.0).astype(jnp.float32)
  window = jnp.concatenate([state.window[:, 1:], tok[:, None]], axis=1)
  count = state.count + alive
  finish = loop_lib.finish_after(tok, window, count, alive, state.finish, sampling)
  here = alive[:, None] & (jnp.arange(state.tokens.shape[1])[None] == state.count[:, None])
  return SlotState(
      row=state.row, count=count, last=tok,
      tokens=jnp.where(here, tok[:, None], state.tokens),
      logprobs=jnp.where(here, lp[:, None], state.logprobs),
      lengths=jnp.where(finish != state.finish, count, state.lengths),
      finish=finish, window=window)


def _take(old, new, source, axis: int):
  """old with its rows along `axis` replaced by new's row source[s] where source[s] >= 0."""
  moved = jnp.take(new, jnp.maximum(source, 0), axis=axis).astype(old.dtype)
  keep = (source >= 0).reshape([-1 if i == axis else 1 for i in range(old.ndim)])
  return jnp.where(keep, moved, old)


def place_cache(cache: Any, new: Any, source: jax.Array, axes: Any) -> Any:
  """`cache` (S slots, write index w) with slot s holding row source[s] of `new`.

  `new` is a prefill's cache (write index T, the prompt in [0, T)); its
  'length' axes are padded to the ring's size and rolled by w - T so the
  prompt ends just before w; leaves
  without a 'batch' axis (the write index) stay the slots'.
  """
  def place(old, fresh, ax):
    if "batch" not in ax:
      return old
    if "length" in ax:
      axis = ax.index("length")
      size = old.shape[axis]
      widths = [(0, 0)] * fresh.ndim
      widths[axis] = (0, size - fresh.shape[axis])
      fresh = jnp.roll(jnp.pad(fresh, widths), (cache.index - new.index) % size, axis=axis)
    return _take(old, fresh, source, ax.index("batch"))
  return jax.tree.map(place, cache, new, axes, is_leaf=parallel.is_axes)


def start_rows(state: SlotState, logits: jax.Array, source: jax.Array,
               rows: jax.Array, seed, sampling: SamplingParams) -> SlotState:
  """`state` with slot s starting row rows[source[s]], its first token drawn.

  logits [R, V] and rows [R] are a prefill's (replicated G ways); slots with
  source[s] < 0 are left as they are.
  """
  fresh = empty_state(rows.shape[0], sampling).replace(
      row=rows, finish=jnp.zeros(rows.shape, jnp.int32))
  tok, lp = _pick(logits, fresh, seed, sampling)
  fresh = _record(fresh, tok, lp, sampling)
  return jax.tree.map(lambda old, x: _take(old, x, source, 0), state, fresh)


StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


def decode(step_fn: StepFn, state: SlotState, cache: Any, seed,
           max_steps: jax.Array, free_target: jax.Array,
           sampling: SamplingParams) -> tuple[SlotState, Any, jax.Array]:
  """Decode steps over every slot until control should return to the host.

  Runs at least one step while a slot is running, then stops when none is,
  after `max_steps`, or once `free_target` slots are free (finished or
  empty). Both are traced, so changing them compiles nothing. The counts are
  over the whole (global) slot array, so every process stops at the same step.

  Returns the state, the cache (its write index wrapped into [0, L)) and the
  steps run.
  """
  size = cache.mask.shape[-1]

  def cond(carry):
    state, _, steps = carry
    free = jnp.sum(state.finish != 0)
    return (jnp.any(state.finish == 0) & (steps < max_steps)
            & ((steps == 0) | (free < free_target)))

  def body(carry):
    state, cache, steps = carry
    logits, cache = step_fn(state.last, cache)
    cache = cache.replace(index=cache.index % size)
    tok, lp = _pick(logits, state, seed, sampling)
    return _record(state, tok, lp, sampling), cache, steps + 1

  return jax.lax.while_loop(cond, body, (state, cache, jnp.zeros((), jnp.int32)))
