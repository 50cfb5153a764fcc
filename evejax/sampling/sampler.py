"""`Sampler`: bucketed, sharded prefill + decode of groups of completions.

One `generate` call: the params are converted once to the model's inference
layout (`model.inference_params`, when it has one: for the VLM, text weights in
the compute dtype and one array per decoder layer, so decode runs the layers
unrolled and reads every weight in place); prompts are cut into chunks of at
most the largest batch bucket; each chunk is padded (left) to a length bucket,
a patch bucket and a batch bucket, prefilled once (vision tower once per
prompt), the cache is replicated G ways (prompt-major, group-minor rows), and
one compiled `lax.while_loop` decodes all rows, the cache donated so XLA
updates it in place. Long budgets decode in stages on a growing cache (see
`loop.decode_loop`). Two programs per bucket combination — prefill keyed by
(batch, length, patches, G, cache size) and decode by (rows, cache size,
stages, SamplingParams) — are compiled ahead of time, counted, timed and
logged; a run compiles at most 2 x |length| x |patch| x |batch buckets| x
|distinct SamplingParams| programs (the layout conversion is one more small
jit, outside that count).

That is `decode_mode="static"` (the default): a chunk decodes until its
longest row ends. `decode_mode="slots"` keeps (a batch bucket) x G
slots busy instead, refilling each as its row ends (`continuous`, `slots`),
with the same rows; every call reports its occupancy (`DecodeStats`: kept
tokens / rows x steps) either way.

Row r's randomness is fold_in(seed_key, global row id) with global row id =
prompt id * G + g (the prompt id: its index in the call, or one the caller
gives), so results depend neither on bucketing, chunking, padding rows,
sharding nor the number of processes.

Several processes: each passes its own prompts and gets its own rows back.
Prompt ids default to the index in the concatenation of every process's
prompts in process order. The processes first gather each other's prompt
sizes (`evejax.distributed`), so that all of them cut the same number of
chunks with the same buckets: chunk k holds each process's prompts
k*C/N .. (k+1)*C/N - 1 (C the largest batch bucket, N processes), padded to
the same block of rows, and each block is placed on the process's own
devices. With one process this is exactly the single-process cut.
"""
from __future__ import annotations

import bisect
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from evejax import distributed
from evejax import parallel
from evejax.models.inputs import ModelInputs
from evejax.models.presets import ModelConfig
from evejax.processing.batching import PromptTooLongError
from evejax.sampling import loop as loop_lib
from evejax.sampling.params import DecodeStats, SampleOutput, SamplingParams

DECODE_MODES = ("static", "slots")


def _batch_axis(axes: Sequence[str | None]) -> int | None:
  return list(axes).index("batch") if "batch" in axes else None


def replicate_rows(cache: Any, axes: Any, group_size: int) -> Any:
  """Repeats every row of `cache` G times along its 'batch' axis (row-major)."""
  if group_size == 1:
    return cache
  def rep(x, ax):
    b = _batch_axis(ax)
    return x if b is None else jnp.repeat(x, group_size, axis=b)
  return jax.tree.map(rep, cache, axes, is_leaf=parallel.is_axes)


def pick_bucket(value: int, buckets: Sequence[int], what: str, fix: str) -> int:
  i = bisect.bisect_left(buckets, value)
  if i == len(buckets):
    raise ValueError(f"{what} is {value}, more than the largest bucket "
                     f"{buckets[-1]} (buckets {tuple(buckets)}); {fix}.")
  return buckets[i]


def _check_buckets(name: str, buckets: Sequence[int]) -> tuple[int, ...]:
  buckets = tuple(sorted(int(b) for b in buckets))
  if not buckets or buckets[0] < 1 or len(set(buckets)) != len(buckets):
    raise ValueError(f"Sampler {name}={buckets}: give distinct positive sizes.")
  return buckets


def seed_key(seed: int | jax.Array) -> jax.Array:
  """A typed key from an int seed, a typed key or raw uint32 key data."""
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    return jax.random.key(int(seed))
  if isinstance(seed, (jax.Array, np.ndarray)):
    if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key) and seed.shape == ():
      return seed
    if seed.dtype == np.uint32 and seed.shape == (2,):
      return jax.random.wrap_key_data(seed)
  raise TypeError(
      f"seed must be an int or one jax PRNG key (jax.random.key(...) or "
      f"jax.random.PRNGKey(...)); got {type(seed).__name__} "
      f"{getattr(seed, 'shape', '')}.")


def signature(tree: Any) -> tuple:
  """Structure, shapes and dtypes: what a compiled program is specific to."""
  leaves, treedef = jax.tree.flatten(tree)
  return (treedef, tuple((x.shape, str(x.dtype)) for x in leaves))


def pad_ids(ids: Sequence[int], rows: int) -> np.ndarray:
  """Prompt ids of a chunk's rows; filler rows take ids past the real ones (discarded)."""
  ids = np.asarray(ids, np.int64).reshape(-1)
  start = int(ids.max()) + 1 if ids.size else 0
  return np.concatenate([ids, start + np.arange(rows - ids.size)])


def filler(pad_id: int):
  """A one-token prompt for a process that has none in a chunk (its rows are dropped)."""
  from evejax.processing import batching  # pylint: disable=g-import-not-at-top
  return batching.Example(tokens=np.array([pad_id], np.int32))


def pad_rows(inputs: ModelInputs, n: int, rows: int) -> ModelInputs:
  """The first n rows, padded to `rows` by repeating row 0 (a valid prompt, discarded)."""
  idx = np.concatenate([np.arange(n), np.zeros(rows - n, np.int64)])
  return inputs.take_rows(idx)


def _concat(outs: Sequence[SampleOutput]) -> SampleOutput:
  """The rows of several outputs in order, their decode stats summed."""
  stats = sum((o.stats for o in outs), DecodeStats())
  rows = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0),
                      *[o.replace(stats=None) for o in outs])
  return rows.replace(stats=stats)


def _hand_rows(outs: Sequence[SampleOutput], on_row) -> None:
  """Calls on_row with each row of the last output (numbered after the earlier ones)."""
  if on_row is None:
    return
  first = sum(o.num_rows for o in outs[:-1])
  o = outs[-1]
  for r in range(o.num_rows):
    n = int(o.lengths[r])
    on_row(first + r, o.tokens[r, :n], o.logprobs[r, :n], int(o.finish_reason[r]))


class Sampler:
  """Samples groups of completions for prompts; see the module docstring.

  Args:
    model_config: the model's shapes.
    mesh: a `jax.sharding.Mesh` (batch over data/fsdp, heads over tensor) or
      None for the default device.
    rules: logical-axis rules for `evejax.parallel` (None: its defaults).
    length_buckets, patch_buckets, batch_buckets: static sizes prompts are
      padded to (token length, image patch rows, prompts per chunk).
    max_cache: the largest KV cache (prompt bucket + max_new_tokens).
    model: the model module (default `evejax.models.vlm`); it must provide
      prefill, decode_step, param_axes and cache_axes with vlm's signatures.
    batch_fn: turns a list of examples into host `ModelInputs`, left-padded
      to the given buckets (default: `evejax.processing.batching.make_batch`).
    prompt_pad_id: token id of prompt padding (masked out; any id works).
    first_stage_tokens: decode starts on a cache with room for this many new
      tokens and doubles it while rows are running (attention reads every
      slot, so long budgets do not slow early steps); 0: one full-size cache.
    unroll_layers: run prefill and decode on `model.inference_params(params,
      config)` when the model has it (the fast path; it holds a second copy
      of the decoder weights during `generate`). False: on the params as
      given, scanned (one layer body compiled: for very deep models whose
      compile time or memory matters more than decode speed).
    decode_mode: "static" decodes each chunk of prompts until its longest row
      ends; "slots" keeps (batch bucket x G) slots busy, refilling finished
      slots with the next prompts (`continuous`; the same samples).
    refill_fraction: "slots": decoding returns to the host to refill once
      this fraction of the slots is free (at least G).
    refill_every: "slots": and at the latest after this many steps (0: no
      limit), so finished rows reach `on_row` this soon.
  """

  def __init__(self, model_config: ModelConfig, *, mesh=None, rules=None,
               length_buckets: Sequence[int], patch_buckets: Sequence[int],
               batch_buckets: Sequence[int], max_cache: int, model=None,
               batch_fn=None, prompt_pad_id: int = 0,
               first_stage_tokens: int = 256, unroll_layers: bool = True,
               decode_mode: str = "static", refill_fraction: float = 0.25,
               refill_every: int = 64):
    if model is None:
      from evejax.models import vlm as model  # pylint: disable=g-import-not-at-top
    self.config = model_config
    self.model = model
    self.mesh = mesh
    self.rules = parallel.make_rules(rules)
    self.length_buckets = _check_buckets("length_buckets", length_buckets)
    self.patch_buckets = tuple(sorted(int(p) for p in patch_buckets))
    self.batch_buckets = _check_buckets("batch_buckets", batch_buckets)
    self.max_cache = int(max_cache)
    if self.max_cache <= self.length_buckets[0]:
      raise ValueError(
          f"Sampler max_cache={self.max_cache} leaves no room for new tokens "
          f"after the smallest length bucket {self.length_buckets[0]}; raise it.")
    self._batch_fn = batch_fn
    self.prompt_pad_id = int(prompt_pad_id)
    self.first_stage_tokens = int(first_stage_tokens)
    self.unroll_layers = bool(unroll_layers)
    if decode_mode not in DECODE_MODES:
      raise ValueError(f"Sampler decode_mode={decode_mode!r}; valid modes: {DECODE_MODES}.")
    if not 0.0 < refill_fraction <= 1.0 or refill_every < 0:
      raise ValueError(f"Sampler refill_fraction={refill_fraction} must be in (0, 1] and "
                       f"refill_every={refill_every} >= 0.")
    self.decode_mode = decode_mode
    self.refill_fraction = float(refill_fraction)
    self.refill_every = int(refill_every)
    self.shards = 1
    if mesh is not None:
      self.shards = parallel.batch_shards(mesh, self.rules)
      bad = [b for b in self.batch_buckets if b % self.shards]
      if bad:
        raise ValueError(
            f"Sampler batch_buckets {bad} are not divisible by {self.shards}, "
            f"the number of devices the batch is split over; use multiples of "
            f"{self.shards}.")
    self._programs: dict[tuple, Any] = {}
    self.compile_seconds = 0.0
    self.cache_axes = model.cache_axes(model_config)
    self._param_shardings: dict[tuple, Any] = {}

  # ---------------------------------------------------------------- compiles
  @property
  def num_compiles(self) -> int:
    """Programs compiled so far (prefill and decode, each bucket combination)."""
    return len(self._programs)

  # The building blocks below (compiled, shardings, batch_sharding, place_inputs,
  # prefill_program, make_batch, check_example) are public for slot decoding
  # (`continuous.SlotRun`), which drives the same programs in another loop.
  def compiled(self, key: tuple, build):
    """The program cached under `key`, built (and its compile timed) the first time."""
    prog = self._programs.get(key)
    if prog is None:
      start = time.perf_counter()
      prog = build()
      took = time.perf_counter() - start
      self.compile_seconds += took
      self._programs[key] = prog
      logging.info("Sampler compiled %s in %.1fs (%d programs so far)",
                   key[:-1], took, len(self._programs))
    return prog

  # --------------------------------------------------------------- sharding
  def shardings(self, axes_tree, shapes):
    return parallel.shardings_for(axes_tree, self.mesh, self.rules, shapes)

  def _place_params(self, params):
    """Params laid out by the model's logical axes (a no-op when they are)."""
    if self.mesh is None:
      return params
    sig = signature(params)
    if sig not in self._param_shardings:
      shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            params)
      self._param_shardings[sig] = self.shardings(
          self.model.param_axes(self.config), shapes)
    return jax.device_put(params, self._param_shardings[sig])

  def _inference_params(self, params):
    """Placed params in the model's decode layout (once per generate call).

    Not cached across calls: it would keep a copy of the weights alive (e.g.
    through a training step) to save about one decode step of work.
    """
    params = self._place_params(params)
    convert = getattr(self.model, "inference_params", None)
    if not self.unroll_layers or convert is None:
      return params
    return convert(params, self.config)

  def batch_sharding(self, ndim: int, axis: int = 0):
    return parallel.batch_sharding(self.mesh, ndim, axis, self.rules)

  def _input_shardings(self, inputs: ModelInputs) -> ModelInputs:
    """Each field split over its batch axis."""
    return jax.tree.map(lambda x, a: self.batch_sharding(x.ndim, a),
                        inputs, ModelInputs.batch_axes())

  def place_inputs(self, inputs: ModelInputs) -> ModelInputs:
    """Host inputs (this process's block of rows) on the mesh."""
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, inputs)
    inputs = jax.tree.map(np.asarray, inputs)
    return distributed.put_local(inputs, self._input_shardings(inputs),
                                 ModelInputs.batch_axes())

  # ---------------------------------------------------------------- programs
  def prefill_program(self, params, inputs: ModelInputs, group: int,
                      cache_size: int):
    b, t = inputs.tokens.shape
    key = ("prefill", b, t, inputs.patches.shape[1], group, cache_size,
           signature(params))
    model, config, axes = self.model, self.config, self.cache_axes

    def prefill(params, inputs):
      logits, cache = model.prefill(params, config, inputs, cache_size)
      logits = jnp.repeat(logits, group, axis=0)
      return logits, replicate_rows(cache, axes, group)

    def build():
      out_shardings = None
      if self.mesh is not None:
        out = parallel.eval_shape_on(self.mesh, prefill, params, inputs)
        out_shardings = (self.batch_sharding(2),
                         self.shardings(axes, out[1]))
      return parallel.OnMesh(jax.jit(prefill, out_shardings=out_shardings),
                             self.mesh).lower(params, inputs).compile()
    return self.compiled(key, build)

  def _grow_cache(self, cache, extra: int):
    """Appends `extra` empty (masked) slots on every leaf's 'length' axis."""
    def pad(x, ax):
      if "length" not in ax:
        return x
      widths = [(0, 0)] * x.ndim
      widths[list(ax).index("length")] = (0, extra)
      return jnp.pad(x, widths)
    cache = jax.tree.map(pad, cache, self.cache_axes, is_leaf=parallel.is_axes)
    if self.mesh is not None:
      cache = jax.lax.with_sharding_constraint(
          cache, self.shardings(self.cache_axes, cache))
    return cache

  def _decode_program(self, params, logits, cache, row_ids, key_, sampling,
                      ends: tuple[int, ...], cache_size: int):
    key = ("decode", logits.shape[0], cache_size, ends, sampling,
           signature(params))
    model, config = self.model, self.config

    def decode(params, logits, cache, row_ids, seed):
      keys = jax.vmap(jax.random.fold_in, (None, 0))(seed, row_ids)
      step = lambda tok, c: model.decode_step(params, config, tok, c)
      return loop_lib.decode_loop(step, logits, cache, keys, sampling,
                                  ends=ends, grow=self._grow_cache)

    def build():
      # One stage returns its cache, so the donated one is updated in place;
      # with several, the first (small) cache is copied once into the loop.
      donate = (2,) if len(ends) == 1 else ()
      return parallel.OnMesh(jax.jit(decode, donate_argnums=donate), self.mesh).lower(
          params, logits, cache, row_ids, key_).compile()
    return self.compiled(key, build)

  # ---------------------------------------------------------------- planning
  def memory_analysis(self, params, sampling: SamplingParams, *, length: int,
                      patches: int = 0, prompts: int | None = None) -> dict:
    """XLA's memory analysis of one chunk's programs, compiled, not run.

    Args:
      params: the params as `generate` gets them, arrays or ShapeDtypeStructs
        (nothing is allocated; e.g. `jax.eval_shape(vlm.init_params, ...)`).
      sampling: the SamplingParams (group size and token budget matter).
      length, patches: the prompt length and patch buckets of the chunk.
      prompts: prompts in the chunk (default: the largest batch bucket).

    Returns:
      {"prefill": ..., "decode": ...} (`CompiledMemoryStats`; with a mesh,
      per device) and "inference_params": the abstract params the programs
      run on (with the unrolled layout, the second copy `generate` holds).
    """
    chunk = self.compile_chunk(params, sampling, length=length, patches=patches,
                               prompts=prompts)
    return {"prefill": chunk["prefill"].memory_analysis(),
            "decode": chunk["decode"].memory_analysis(),
            "inference_params": chunk["inference_params"]}

  def abstract_inference_params(self, params):
    """`params` (arrays or ShapeDtypeStructs) as shapes in the decode layout, laid out
    on the mesh: what `generate`'s programs run on, without converting anything."""
    abstract = lambda tree, axes: parallel.abstract_tree(
        tree, None if self.mesh is None else self.shardings(axes, tree))
    params = parallel.abstract_tree(params)
    convert = getattr(self.model, "inference_params", None)
    if self.unroll_layers and convert is not None:
      return abstract(jax.eval_shape(lambda p: convert(p, self.config), params),
                      self.model.inference_param_axes(self.config))
    return abstract(params, self.model.param_axes(self.config))

  def abstract_inputs(self, rows: int, length: int, patches: int) -> ModelInputs:
    """The shapes of a batch of `rows` prompts in the (length, patches) buckets."""
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    inputs = ModelInputs(
        tokens=i32(rows, length), mask=i32(rows, length),
        positions=i32(3, rows, length),
        patches=jax.ShapeDtypeStruct(
            (rows, patches, self.config.vision.patch_dim), jnp.float32),
        patch_coords=i32(rows, patches, 2), patch_image=i32(rows, patches),
        patch_window=i32(rows, patches))
    return parallel.abstract_tree(
        inputs, None if self.mesh is None else self._input_shardings(inputs))

  def compile_chunk(self, params, sampling: SamplingParams, *, length: int,
                    patches: int = 0, prompts: int | None = None) -> dict:
    """One chunk's prefill and decode programs, compiled ahead of time, not run.

    The arguments are `memory_analysis`'s; returns {"prefill", "decode"}
    (`jax.stages.Compiled`, for their memory and cost analyses),
    "inference_params" and "seconds" (each one's compile time; 0 when this
    sampler had compiled it already). On a mesh of compile-only devices (a TPU topology)
    this is the target compiler's program.
    """
    rows = prompts or self.batch_buckets[-1]
    abstract = lambda tree, axes: parallel.abstract_tree(
        tree, None if self.mesh is None else self.shardings(axes, tree))
    params = self.abstract_inference_params(params)
    inputs = self.abstract_inputs(rows, length, patches)
    ends = loop_lib.stage_ends(sampling.max_new_tokens, self.first_stage_tokens)
    cache_size = length + ends[0]
    start = time.perf_counter()
    prefill = self.prefill_program(params, inputs, sampling.group_size,
                                   cache_size)
    took = time.perf_counter() - start
    logits, cache = prefill.out_info  # ShapeDtypeStructs of its outputs
    by_batch = lambda x: parallel.abstract_tree(
        x, None if self.mesh is None else self.batch_sharding(x.ndim))
    logits, cache = by_batch(logits), abstract(cache, self.cache_axes)
    row_ids = by_batch(jax.ShapeDtypeStruct((logits.shape[0],), jnp.int32))
    key = jax.eval_shape(lambda: jax.random.key(0))
    start = time.perf_counter()
    decode = self._decode_program(params, logits, cache, row_ids, key,
                                  sampling, ends, cache_size)
    return {"prefill": prefill, "decode": decode, "inference_params": params,
            "seconds": {"prefill": took, "decode": time.perf_counter() - start}}

  # --------------------------------------------------------------- generate
  def generate(self, params, prompts: Sequence[Any], sampling: SamplingParams,
               seed: int | jax.Array, *, prompt_ids: Sequence[int] | None = None,
               on_row: Callable[[int, np.ndarray, np.ndarray, int], None] | None = None
               ) -> SampleOutput:
    """Samples `sampling.group_size` completions for each prompt.

    Args:
      params: model parameters (placed on the mesh here if one is set).
      prompts: `evejax.processing.batching.Example`s (text and images); with
        several processes, this process's prompts (it may have none while
        others have some).
      sampling: how to sample.
      seed: an int or a key; results are reproducible per (seed, prompt id,
        group member).
      prompt_ids: each prompt's id (distinct over all processes); default:
        its index in the call (over every process's prompts, in process order).
      on_row: called as on_row(row, tokens, logprobs, finish_reason) with each
        of this process's rows (its index in the output, the completion up to
        its length) as soon as the host has it: when the row ends with
        decode_mode "slots", when its chunk ends with "static".

    Returns:
      A host (numpy) `SampleOutput` with len(prompts) * G rows and its
      `DecodeStats`.
    """
    if self.decode_mode == "slots":
      from evejax.sampling import continuous  # pylint: disable=g-import-not-at-top
      return continuous.SlotRun(self, self._inference_params(params), prompts, sampling,
                                seed, prompt_ids, on_row).run()
    if distributed.is_multiprocess():
      return self._generate_processes(params, prompts, sampling, seed, prompt_ids, on_row)
    if not prompts:
      raise ValueError("Sampler.generate got no prompts; pass at least one.")
    params = self._inference_params(params)
    chunk = self.batch_buckets[-1]
    outs = []
    for start in range(0, len(prompts), chunk):
      part = list(prompts[start:start + chunk])
      bucket = min(b for b in self.batch_buckets if b >= len(part))
      inputs = self.make_batch(part, start, bucket)
      ids = None if prompt_ids is None else pad_ids(prompt_ids[start:start + chunk], bucket)
      outs.append(self._generate_placed(
          params, inputs, sampling, seed, num_prompts=len(part),
          prompt_offset=start, batch_bucket=bucket, prompt_ids=ids))
      _hand_rows(outs, on_row)
    return _concat(outs)

  def _generate_processes(self, params, prompts, sampling, seed, prompt_ids, on_row
                          ) -> SampleOutput:
    """`generate` with several processes (see the module docstring)."""
    count, me = distributed.process_count(), distributed.process_index()
    sizes = distributed.allgather([[int(np.shape(ex.tokens)[0]), int(ex.num_patches)]
                                   for ex in prompts])
    counts = [len(x) for x in sizes]
    if not sum(counts):
      raise ValueError("Sampler.generate got no prompts on any process; pass at least one.")
    if self.shards % count:
      raise ValueError(f"the batch is split {self.shards} ways, which {count} processes "
                       "cannot share; see evejax.distributed.check_batch_layout.")
    if prompt_ids is None:
      prompt_ids = sum(counts[:me]) + np.arange(len(prompts))
    prompt_ids = np.asarray(prompt_ids, np.int64).reshape(-1)
    params = self._inference_params(params)
    per = self.batch_buckets[-1] // count      # prompts of one process per chunk
    chunks = max(-(-n // per) for n in counts)
    outs = []
    for k in range(chunks):
      parts = [np.asarray(x[k * per:(k + 1) * per], np.int64).reshape(-1, 2) for x in sizes]
      rows = max(len(x) for x in parts)
      bucket = min(b for b in self.batch_buckets if b >= rows * count)
      lengths = np.concatenate(parts)
      length = pick_bucket(int(lengths[:, 0].max()), self.length_buckets, "A prompt's length",
                           "raise length_buckets")
      patch = (pick_bucket(int(lengths[:, 1].max()), self.patch_buckets, "A prompt's patches",
                           "raise patch_buckets") if self.patch_buckets else 0)
      part = list(prompts[k * per:(k + 1) * per])
      if not part:   # this process joins the chunk with filler rows only
        part_inputs = self.make_batch([filler(self.prompt_pad_id)], 0, bucket // count,
                                      length_buckets=(length,), patch_buckets=(patch,))
      else:
        part_inputs = self.make_batch(part, k * per, bucket // count,
                                      length_buckets=(length,), patch_buckets=(patch,))
      ids = pad_ids(prompt_ids[k * per:(k + 1) * per], bucket // count)
      outs.append(self._generate_placed(
          params, part_inputs, sampling, seed, num_prompts=len(part), prompt_offset=0,
          batch_bucket=bucket // count, prompt_ids=ids))
      _hand_rows(outs, on_row)
    return _concat(outs)

  def make_batch(self, examples, offset: int, bucket: int, *,
                 length_buckets: Sequence[int] | None = None,
                 patch_buckets: Sequence[int] | None = None) -> ModelInputs:
    for i, ex in enumerate(examples):
      self.check_example(ex, offset + i)
    length_buckets = self.length_buckets if length_buckets is None else tuple(length_buckets)
    patch_buckets = self.patch_buckets if patch_buckets is None else tuple(patch_buckets)
    if self._batch_fn is not None:
      return self._batch_fn(examples, padding="left",
                            length_buckets=length_buckets,
                            patch_buckets=patch_buckets)
    from evejax.processing import batching  # pylint: disable=g-import-not-at-top
    c = self.config
    return batching.make_batch(
        examples, vision=c.vision, image_token_id=c.image_token_id,
        vision_start_id=c.vision_start_token_id, pad_id=self.prompt_pad_id,
        length_buckets=length_buckets, patch_buckets=patch_buckets,
        batch_buckets=(bucket,), padding="left")

  def check_example(self, ex, index: int) -> None:
    """One clear error per thing a caller can get wrong with a prompt."""
    tokens = np.asarray(ex.tokens)
    if tokens.ndim != 1 or tokens.size == 0:
      raise ValueError(f"Prompt {index} is empty (token shape {tokens.shape}); "
                       "every prompt needs at least one token.")
    if tokens.size > self.length_buckets[-1]:
      raise PromptTooLongError("tokens", int(tokens.size),
                               self.length_buckets[-1], index)
    m = self.config.vision.spatial_merge_size
    n_patches = 0
    for k, (patches, grid) in enumerate(getattr(ex, "images", ())):
      _, gh, gw = (int(g) for g in grid)
      if gh < m or gw < m or gh % m or gw % m:
        raise ValueError(
            f"Prompt {index}, image {k}: patch grid {tuple(grid)} is too small "
            f"or not a multiple of the merge size {m}; the smallest image is "
            f"{m * self.config.vision.patch_size} pixels a side. Make images "
            "with evejax.processing.images.preprocess_image (it resizes).")
      n_patches += int(np.shape(patches)[0])
    if n_patches > (self.patch_buckets[-1] if self.patch_buckets else 0):
      raise PromptTooLongError(
          "patches", n_patches,
          self.patch_buckets[-1] if self.patch_buckets else 0, index)

  def generate_from_inputs(self, params, inputs: ModelInputs,
                           sampling: SamplingParams, seed: int | jax.Array, *,
                           num_prompts: int | None = None,
                           prompt_offset: int = 0,
                           batch_bucket: int | None = None) -> SampleOutput:
    """Like `generate`, for an already built, left-padded host batch.

    Args:
      params: model parameters.
      inputs: host `ModelInputs` whose first `num_prompts` rows are prompts;
        its length and patch counts must be bucket sizes.
      sampling: how to sample.
      seed: int or key.
      num_prompts: real rows (default: all); the rest are ignored.
      prompt_offset: global index of row 0 (for keys and `prompt_index`).
      batch_bucket: rows to pad to (default: the smallest batch bucket that
        fits).

    Returns:
      A host `SampleOutput` with num_prompts * G rows.
    """
    if distributed.is_multiprocess():
      raise ValueError("Sampler.generate_from_inputs runs in one process; with several, "
                       "call generate with each process's prompts.")
    return self._generate_placed(
        self._inference_params(params), inputs, sampling, seed,
        num_prompts=num_prompts, prompt_offset=prompt_offset,
        batch_bucket=batch_bucket)

  def _generate_placed(self, params, inputs: ModelInputs,
                       sampling: SamplingParams, seed: int | jax.Array, *,
                       num_prompts: int | None, prompt_offset: int,
                       batch_bucket: int | None,
                       prompt_ids: np.ndarray | None = None) -> SampleOutput:
    """`generate_from_inputs` on params from `_inference_params`.

    With several processes `inputs` is this process's block of `batch_bucket`
    rows and `prompt_ids` (one per row) are given.
    """
    n = inputs.tokens.shape[0] if num_prompts is None else num_prompts
    g = sampling.group_size
    self._check_inputs(inputs, n, sampling)
    if batch_bucket is None:
      batch_bucket = pick_bucket(
          n, self.batch_buckets, "The number of prompts in one batch",
          "raise batch_buckets or call generate, which splits prompts")
    inputs = pad_rows(inputs, n, batch_bucket)
    ends = loop_lib.stage_ends(sampling.max_new_tokens, self.first_stage_tokens)
    cache_size = inputs.tokens.shape[1] + ends[0]
    dev_inputs = self.place_inputs(inputs)
    prefill = self.prefill_program(params, dev_inputs, g, cache_size)
    logits, cache = prefill(params, dev_inputs)

    if prompt_ids is None:
      prompt_ids = prompt_offset + np.arange(batch_bucket)
    prompt_index = np.repeat(np.asarray(prompt_ids, np.int64), g)
    row_ids = (prompt_index * g + np.tile(np.arange(g), batch_bucket)).astype(np.int32)
    row_ids = (distributed.put_local(row_ids, self.batch_sharding(1), 0)
               if self.mesh is not None else jnp.asarray(row_ids))
    key = seed_key(seed)
    decode = self._decode_program(params, logits, cache, row_ids, key, sampling,
                                  ends, cache_size)
    (tokens, logprobs, lengths, finish, steps), cache = decode(
        params, logits, cache, row_ids, key)
    del cache
    keep = n * g
    rows = distributed.local_rows
    lengths = rows(lengths)[:keep]
    steps = int(steps)
    stats = DecodeStats(decode_steps=steps, row_steps=steps * batch_bucket * g,
                        tokens=int(lengths.sum()))
    return SampleOutput(
        tokens=rows(tokens)[:keep],
        logprobs=rows(logprobs)[:keep],
        lengths=lengths,
        finish_reason=rows(finish)[:keep],
        prompt_index=prompt_index[:keep].astype(np.int32), stats=stats)

  def _check_inputs(self, inputs: ModelInputs, n: int,
                    sampling: SamplingParams) -> None:
    """Clear errors for what a caller can get wrong."""
    mask = np.asarray(inputs.mask)[:n]
    t = mask.shape[1]
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if empty.size:
      raise ValueError(f"Prompt {int(empty[0])} is empty (no tokens); every "
                       "prompt needs at least one token.")
    if t not in self.length_buckets:
      raise ValueError(
          f"Prompt length {t} is not a length bucket {self.length_buckets}; "
          "pad with the sampler's length_buckets.")
    p = inputs.patches.shape[1]
    if p and p not in self.patch_buckets:
      raise ValueError(
          f"Patch rows {p} are not a patch bucket {self.patch_buckets}; "
          "pad with the sampler's patch_buckets.")
    if t + sampling.max_new_tokens > self.max_cache:
      raise ValueError(
          f"max_new_tokens={sampling.max_new_tokens} plus the prompt length "
          f"bucket {t} needs a KV cache of {t + sampling.max_new_tokens}, more "
          f"than max_cache={self.max_cache}; lower max_new_tokens (at most "
          f"{self.max_cache - t} here) or raise max_cache.")
