"""The host side of slot decoding (`Sampler(decode_mode="slots")`).

One `generate` call keeps S = (batch bucket) x G slots busy: it prefills as
many prompts as there are free groups of G slots, `insert`s each prompt's
cache and first token into G free slots, decodes until a fraction of the
slots is free (or `refill_every` steps), hands every finished row to
`on_row` at once, and repeats until every prompt is done. Four kinds of
program, compiled once and counted with the sampler's: an empty state and
ring cache (per slot count and ring size), a prefill (the static path's,
its cache the prompt's length) and an insert per (prefill batch, length,
patch) buckets, and the decode steps (per slot count, ring size and
SamplingParams). Refills compile nothing new once their buckets have run.

Costs against the static path: every step attends over the whole ring
(longest prompt bucket + max_new_tokens), where static decoding starts on a
cache of `first_stage_tokens` and grows it only while rows run; each refill
runs a prefill padded to a batch bucket and rewrites the slot cache once
(a select over it, so the rows move between devices but the cache does not).

Several processes: each fills its own slots from its own prompts. Before
each refill they all-gather (take, longest prompt, most patches, queued,
running) so they run the same prefill bucket; `decode` stops on counts
over the global slot array, so all stop at the same step.
"""
from __future__ import annotations

import collections
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from evejax import distributed
from evejax import parallel
from evejax.models.inputs import ModelInputs
from evejax.sampling import sampler as sampler_lib
from evejax.sampling import slots as slots_lib
from evejax.sampling.params import DecodeStats, SampleOutput, SamplingParams

RowFn = Callable[[int, np.ndarray, np.ndarray, int], None]


def _everywhere(info: Any) -> list[Any]:
  """Every process's `info`, in process order (a tiny all-gather of host numbers)."""
  return distributed.allgather(info) if distributed.is_multiprocess() else [info]


def _scalar(x) -> int:
  """A replicated scalar on the host (with several processes, the local copy)."""
  return int(np.asarray(x.addressable_data(0) if hasattr(x, "addressable_data") else x))


class SlotRun:
  """One `generate` call decoded in slots; see the module docstring."""

  def __init__(self, sampler, params, prompts: Sequence[Any], sampling: SamplingParams,
               seed, prompt_ids: Sequence[int] | None, on_row: RowFn | None):
    self.s, self.params, self.prompts, self.sp = sampler, params, list(prompts), sampling
    self.key = sampler_lib.seed_key(seed)
    self.on_row = on_row
    self.procs, self.me = distributed.process_count(), distributed.process_index()
    for i, ex in enumerate(self.prompts):
      sampler.check_example(ex, i)
    self.sizes = [(int(np.shape(ex.tokens)[0]), int(ex.num_patches)) for ex in self.prompts]
    counts = [int(c) for c in _everywhere(len(self.prompts))]
    if not sum(counts):
      raise ValueError("Sampler.generate got no prompts on any process; pass at least one.")
    if sampler.shards % self.procs:
      raise ValueError(f"the batch is split {sampler.shards} ways, which {self.procs} "
                       "processes cannot share; see evejax.distributed.check_batch_layout.")
    if prompt_ids is None:
      prompt_ids = sum(counts[:self.me]) + np.arange(len(self.prompts))
    self.ids = np.asarray(prompt_ids, np.int64).reshape(-1)
    longest = max(x[0] for x in _everywhere([max([n for n, _ in self.sizes], default=1)]))
    length = sampler_lib.pick_bucket(longest, sampler.length_buckets,
                                     "A prompt's length", "raise length_buckets")
    self.size = length + sampling.max_new_tokens   # the ring cache
    if self.size > sampler.max_cache:
      raise ValueError(
          f"max_new_tokens={sampling.max_new_tokens} plus the prompt length bucket "
          f"{length} needs a KV cache of {self.size}, more than max_cache="
          f"{sampler.max_cache}; lower max_new_tokens or raise max_cache.")
    self.bucket = min(b for b in sampler.batch_buckets
                      if b >= min(max(counts) * self.procs, sampler.batch_buckets[-1]))
    self.g = sampling.group_size
    self.slots = self.bucket * self.g
    self.local = self.slots // self.procs
    n = len(self.prompts) * self.g
    self.tokens = np.full((n, sampling.max_new_tokens), sampling.pad_id, np.int32)
    self.logprobs = np.zeros((n, sampling.max_new_tokens), np.float32)
    self.lengths = np.zeros((n,), np.int32)
    self.finish = np.zeros((n,), np.int32)
    self.holder = np.full((self.local,), -1, np.int64)   # output row held by each local slot
    self.queue = collections.deque(range(len(self.prompts)))
    self.stats = DecodeStats()
    self.state = self.cache = None

  # ------------------------------------------------------------------ loop
  def run(self) -> SampleOutput:
    s = self.s
    while True:
      free = np.flatnonzero(self.holder < 0)
      take = min(len(free) // self.g, len(self.queue))
      chosen = [self.queue[i] for i in range(take)]
      infos = _everywhere([
          take, max([self.sizes[i][0] for i in chosen], default=1),
          max([self.sizes[i][1] for i in chosen], default=0),
          len(self.queue) - take, int(take > 0 or (self.holder >= 0).any())])
      if not any(x[3] or x[4] for x in infos):
        break
      per = max(x[0] for x in infos)
      if per:
        for _ in range(take):
          self.queue.popleft()
        self._refill(chosen, free, per, max(x[1] for x in infos),
                     max(x[2] for x in infos))
      queued = sum(x[3] for x in infos)
      target = (max(self.g, int(np.ceil(s.refill_fraction * self.slots)))
                if queued else self.slots + 1)
      self._decode(target)
      self._collect()
    return SampleOutput(tokens=self.tokens, logprobs=self.logprobs, lengths=self.lengths,
                        finish_reason=self.finish,
                        prompt_index=np.repeat(self.ids, self.g).astype(np.int32),
                        stats=DecodeStats(self.stats.decode_steps, self.stats.row_steps,
                                          int(self.lengths.sum())))

  def _refill(self, chosen: list[int], free: np.ndarray, per: int, longest: int,
              most: int) -> None:
    """Prefills `chosen` (this process's; `per` the most any process takes) into free slots."""
    s, g = self.s, self.g
    pick = sampler_lib.pick_bucket
    bucket = min(b for b in s.batch_buckets if b >= per * self.procs)
    block = bucket // self.procs      # this process's prompts in the prefill
    length = pick(longest, s.length_buckets, "A prompt's length", "raise length_buckets")
    patch = (pick(most, s.patch_buckets, "A prompt's patches", "raise patch_buckets")
             if s.patch_buckets else 0)
    examples = [self.prompts[i] for i in chosen] or [sampler_lib.filler(s.prompt_pad_id)]
    inputs = s.make_batch(examples, 0, block, length_buckets=(length,),
                          patch_buckets=(patch,))
    inputs = sampler_lib.pad_rows(inputs, len(examples), block)
    ids = sampler_lib.pad_ids(self.ids[chosen], block)
    rows = (np.repeat(ids, g) * g + np.tile(np.arange(g), block)).astype(np.int32)
    source = np.full((self.local,), -1, np.int32)
    first = self.me * block * g       # global row of this process's first prefilled row
    for k, p in enumerate(chosen):
      for m in range(g):
        slot = free[k * g + m]
        source[slot] = first + k * g + m
        self.holder[slot] = p * g + m
    dev_inputs = s.place_inputs(inputs)
    if self.state is None:
      self.state, self.cache = self._init_program(dev_inputs)(self.params, dev_inputs)
    prefill = s.prefill_program(self.params, dev_inputs, g, length)
    logits, new = prefill(self.params, dev_inputs)
    source, rows = self._put(source), self._put(rows)
    insert = self._insert_program(logits, new, source, rows)
    self.state, self.cache = insert(self.state, self.cache, logits, new, source, rows, self.key)
    self.stats += DecodeStats(decode_steps=1, row_steps=block * g)

  def _decode(self, target: int) -> None:
    every = self.s.refill_every or self.sp.max_new_tokens
    # numpy scalars: the same (replicated) value on every process
    steps_arg, target_arg = np.int32(every), np.int32(target)
    decode = self._decode_program(steps_arg)
    self.state, self.cache, steps = decode(self.params, self.state, self.cache, self.key,
                                           steps_arg, target_arg)
    steps = _scalar(steps)
    self.stats += DecodeStats(decode_steps=steps, row_steps=steps * self.local)

  def _collect(self) -> None:
    """Copies every finished row out of its slot and frees the slot."""
    rows = distributed.local_rows
    finish = rows(self.state.finish)
    done = np.flatnonzero((self.holder >= 0) & (finish > 0))
    if not done.size:
      return
    tokens, logprobs = rows(self.state.tokens), rows(self.state.logprobs)
    lengths = rows(self.state.lengths)
    for slot in done:
      r = int(self.holder[slot])
      self.tokens[r], self.logprobs[r] = tokens[slot], logprobs[slot]
      self.lengths[r], self.finish[r] = lengths[slot], finish[slot]
      self.holder[slot] = -1
      if self.on_row is not None:
        n = int(lengths[slot])
        self.on_row(r, tokens[slot, :n], logprobs[slot, :n], int(finish[slot]))

  @classmethod
  def planned(cls, sampler, params, sampling: SamplingParams, *, bucket: int,
              length: int) -> "SlotRun":
    """A run of `bucket` x G slots and a ring of `length` + max_new_tokens, for
    compiling its programs from shapes (`compile_slots`): no prompts, nothing run."""
    run = cls.__new__(cls)
    run.s, run.params, run.sp = sampler, params, sampling
    run.key = jax.eval_shape(lambda: jax.random.key(0))
    run.procs, run.me = 1, 0   # global shapes: the same programs on every process
    run.size = length + sampling.max_new_tokens
    run.bucket, run.g = bucket, sampling.group_size
    run.slots = run.local = bucket * sampling.group_size
    run.state = run.cache = None
    return run

  # -------------------------------------------------------------- programs
  def _put(self, x: np.ndarray):
    s = self.s
    if s.mesh is None:
      return jnp.asarray(x)
    return distributed.put_local(x, s.batch_sharding(1), 0)

  def _out_shardings(self, state, cache):
    s = self.s
    if s.mesh is None:
      return None
    return (jax.tree.map(lambda x: s.batch_sharding(x.ndim), state),
            s.shardings(s.cache_axes, cache))

  def _key(self, name: str, *parts) -> tuple:
    return ("slots_" + name, self.slots, self.size) + parts + (
        self.sp, sampler_lib.signature(self.params))

  def _init_program(self, inputs: ModelInputs):
    """An empty state and a zero ring cache of S slots, laid out on the mesh."""
    s, sp, size = self.s, self.sp, self.size
    model, config, axes = s.model, s.config, s.cache_axes
    rows = self.slots // inputs.tokens.shape[0]   # the first prefill fills every slot

    def init(params, inputs):
      shapes = jax.eval_shape(
          lambda p, i: sampler_lib.replicate_rows(model.prefill(p, config, i, size)[1], axes, rows),
          params, inputs)
      cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
      return slots_lib.empty_state(self.slots, sp), cache

    def build():
      out = parallel.eval_shape_on(s.mesh, init, self.params, inputs)
      return parallel.OnMesh(jax.jit(init, out_shardings=self._out_shardings(*out)),
                             s.mesh).lower(self.params, inputs).compile()
    return s.compiled(self._key("init", inputs.tokens.shape, inputs.patches.shape), build)

  def _insert_program(self, logits, new, source, rows):
    s, sp, axes = self.s, self.sp, self.s.cache_axes

    def insert(state, cache, logits, new, source, rows, seed):
      cache = slots_lib.place_cache(cache, new, source, axes)
      return slots_lib.start_rows(state, logits, source, rows, seed, sp), cache

    def build():
      args = (self.state, self.cache, logits, new, source, rows, self.key)
      return parallel.OnMesh(
          jax.jit(insert, donate_argnums=(0, 1),
                  out_shardings=self._out_shardings(self.state, self.cache)),
          s.mesh).lower(*args).compile()
    return s.compiled(self._key("insert", logits.shape[0], new.mask.shape[-1]), build)

  def _decode_program(self, scalar):
    s, sp = self.s, self.sp
    model, config = s.model, s.config

    def decode(params, state, cache, seed, max_steps, free_target):
      step = lambda tok, c: model.decode_step(params, config, tok, c)
      return slots_lib.decode(step, state, cache, seed, max_steps, free_target, sp)

    def build():
      out = self._out_shardings(self.state, self.cache)
      if out is not None:
        out = out + (jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec()),)
      return parallel.OnMesh(
          jax.jit(decode, donate_argnums=(1, 2), out_shardings=out), s.mesh).lower(
              self.params, self.state, self.cache, self.key, scalar, scalar).compile()
    return s.compiled(self._key("decode"), build)


def compile_slots(sampler, params, sampling: SamplingParams, *, length: int,
                  patches: int = 0, prompts: int | None = None) -> dict:
  """The programs of one slot-decoded `generate` call, compiled ahead of time, not run.

  The counterpart of `Sampler.compile_chunk` for decode_mode "slots", at
  (batch bucket `prompts`) x G slots whose ring holds a `length`-token prompt
  and max_new_tokens: "init" (the empty state and ring), "prefill" (a refill
  of every slot at once, the largest; partial refills prefill fewer prompts),
  "insert" (its caches and first tokens into the slots), "decode" (steps until
  enough slots are free, a data-dependent loop), "inference_params" and
  "seconds" (each one's compile time).
  """
  bucket = prompts or sampler.batch_buckets[-1]
  params = sampler.abstract_inference_params(params)
  inputs = sampler.abstract_inputs(bucket, length, patches)
  run = SlotRun.planned(sampler, params, sampling, bucket=bucket, length=length)
  seconds = {}

  def timed(name, build):
    start = time.perf_counter()
    out = build()
    seconds[name] = time.perf_counter() - start
    return out

  by_batch = lambda x: parallel.abstract_tree(
      x, None if sampler.mesh is None else sampler.batch_sharding(x.ndim))
  by_axes = lambda tree: parallel.abstract_tree(
      tree, None if sampler.mesh is None else sampler.shardings(sampler.cache_axes, tree))
  init = timed("init", lambda: run._init_program(inputs))  # pylint: disable=protected-access
  state, cache = init.out_info
  run.state, run.cache = jax.tree.map(by_batch, state), by_axes(cache)
  prefill = timed("prefill", lambda: sampler.prefill_program(params, inputs, run.g, length))
  logits, new = prefill.out_info
  logits, new = by_batch(logits), by_axes(new)
  slot_ids = by_batch(jax.ShapeDtypeStruct((run.slots,), jnp.int32))
  insert = timed("insert", lambda: run._insert_program(  # pylint: disable=protected-access
      logits, new, slot_ids, slot_ids))
  decode = timed("decode", lambda: run._decode_program(np.int32(1)))  # pylint: disable=protected-access
  return {"init": init, "prefill": prefill, "insert": insert, "decode": decode,
          "inference_params": params, "seconds": seconds}
