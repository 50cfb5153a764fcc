"""Benchmark: evejax's sampler against transformers `generate`.

  python -m evejax.tools.bench_sampler [--batch 8] [--prompt_len 64]
      [--new_tokens 128] [--repeats 3] [--dtype float32] [--compare_scan]
      [--ceiling]
  python -m evejax.tools.bench_sampler --select [--batch 64] [--vocab 151936]
  python -m evejax.tools.bench_sampler --slots [--prompts 32] [--batch 8]
      [--new_tokens 256] [--mean_tokens 32] [--refill_every 64]
  python -m evejax.tools.bench_sampler --roofline [--preset qwen2_5_vl_3b]
      [--batch 64] [--bandwidth_gbs 3350] [--compare_scan]

Default (CPU) mode: builds a random checkpoint of about 50M parameters with
transformers in this process (shape flags below; `--base_preset` picks the
family: `tiny` is Qwen2.5-VL, `qwen3_vl_tiny` Qwen3-VL), loads it
into evejax with `hf.load_params`, and runs the same greedy job both ways:
the same batch of text prompts of --prompt_len tokens, --new_tokens new tokens
each (EOS disabled, so every row runs to the end), the same dtype. Prints
tokens/s of each, their ratio, evejax's compile time (excluded from its
rate) and how many greedy tokens agree. Rounds interleave the two so load
from other processes hits both alike; each rate is the median round.
--compare_scan adds a third contender to every round: the sampler on the
scanned params (`Sampler(unroll_layers=False)`), to measure what the unrolled
decode path gains. --ceiling then times what bounds a decode step on this
machine: the step's matmuls alone (every text weight once, chained, at this
batch, in one compiled loop) and a plain read of the same bytes; it prints
the tokens/s each would allow and that rate over transformers'.

--select: times only the token selection of one decode step (`sample_tokens`)
on random logits of --batch x --vocab (default 64 x 151936, Qwen's
vocabulary), against the plain JAX forms in the same process (jnp.argmax,
jax.random.categorical, a full argsort for top-p, log_softmax for the
log-prob), for greedy, T = 0.7, top-k 50 and top-p 0.9 (logits scaled so the
nucleus is a few dozen tokens, as for a trained model).

--context 1024,8192: decode tokens/s at each context length for a Qwen3.5
and a Qwen3-VL model of equal size (the shape flags; random weights): a
DeltaNet layer's decode step reads a fixed-size state, so only Qwen3.5's
attention layers (one in four) slow down with the context.

--slots: static chunks against slot decoding (`Sampler(decode_mode="slots")`)
on long-tailed lengths: a random model of the shape flags samples --prompts
text prompts (--group completions each, batch bucket --batch, T = 1, up to
--new_tokens tokens); every --mean_tokens-th token id ends a row, about
1 / --mean_tokens of a random model's draws, so lengths are roughly geometric
with a long tail. Prints each path's occupancy (kept tokens / rows x steps),
decode steps, median seconds, their ratio and whether the rows are identical.

--roofline: a random model of a preset's shape (default 3B) in bf16, batch 64;
decode time per step = (time for N new tokens - time for 1) / (N - 1); bytes
per step = text-model weights + the KV cache slots the attention reads; the
fraction of the device's HBM bandwidth that implies is printed (with
--compare_scan also for the scanned sampler). Device bandwidth is looked up
from the device kind or given with --bandwidth_gbs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from evejax import sampling
from evejax.models import families
from evejax.models import hf
from evejax.models import presets
from evejax.models import vlm
from evejax.processing import batching

# Peak HBM bandwidth, bytes/s, by a substring of `device_kind` (first match).
BANDWIDTH = (
    ("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.04e12), ("A100 80GB", 1.94e12), ("A100", 1.56e12),
    ("L4", 0.3e12), ("TPU v6", 1.64e12), ("TPU v5p", 2.76e12),
    ("TPU v5", 0.82e12), ("TPU v4", 1.2e12),
)


def bench_config(args, base_preset: str | None = None,
                 intermediate: int | None = None) -> presets.ModelConfig:
  """A ~50M-parameter text model with the base preset's tiny vision tower
  (unused here), of the base preset's family. Qwen3.5's DeltaNet layers get
  heads / 2 key heads and `heads` value heads of head_dim."""
  base = presets.get_preset(base_preset or args.base_preset)
  head_dim = args.hidden // args.heads
  fields = {f.name for f in dataclasses.fields(base.text)}
  rotary = int(head_dim * getattr(base.text, "partial_rotary_factor", 1.0))
  shape = dict(vocab_size=args.vocab, hidden_size=args.hidden,
               intermediate_size=intermediate or args.intermediate,
               num_layers=args.layers,
               num_heads=args.heads, num_kv_heads=args.kv_heads,
               mrope_section=_mrope_section(base.text, rotary),
               tie_word_embeddings=False)
  if "head_dim" in fields:
    shape["head_dim"] = head_dim  # a field where the family sets it explicitly
  if "layer_types" in fields:
    shape.update(layer_types=(), linear_num_key_heads=max(args.heads // 2, 1),
                 linear_num_value_heads=args.heads, linear_key_head_dim=head_dim,
                 linear_value_head_dim=head_dim)
  text = dataclasses.replace(base.text, **shape)
  vision = dataclasses.replace(base.vision, out_hidden_size=args.hidden)
  return base.replace(text=text, vision=vision, dtype=args.dtype)


def _mrope_section(base_text, rotary_dim: int) -> tuple[int, int, int]:
  """The base preset's split of rotary_dim/2 scaled to another head size."""
  half, base = rotary_dim // 2, base_text.mrope_section
  t, h = half * base[0] // sum(base), half * base[1] // sum(base)
  return (t, h, half - t - h)


def _prompts(batch: int, length: int, vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  # Ids below 8 are special tokens in the tiny layout (e.g. <|image_pad|>).
  return rng.integers(8, vocab, size=(batch, length)).astype(np.int32)


def _count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def run_cpu(args) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  config = bench_config(args)
  torch.manual_seed(0)
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  hf_dict = hf.config_to_hf(config, args.dtype)
  hf_config = transformers.AutoConfig.for_model(hf_dict.pop("model_type"),
                                                **hf_dict)
  for c in (hf_config, hf_config.text_config, hf_config.vision_config):
    c.initializer_range = 0.1  # varied greedy paths, not a repeated token
  model = getattr(transformers, families.of(config).hf_architecture)(hf_config)
  model = model.to(torch_dtype).eval()
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    params = hf.load_params(tmp, hf.config_from_hf(tmp),
                            dtype=jnp.dtype(args.dtype))
  n_text = _count(params["text"]) if "text" in params else _count(params)
  print(f"model: {_count(params) / 1e6:.1f}M params ({n_text / 1e6:.1f}M "
        f"text), dtype {args.dtype}; batch {args.batch}, prompt "
        f"{args.prompt_len}, {args.new_tokens} new tokens, greedy; jax on "
        f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs")

  prompts = _prompts(args.batch, args.prompt_len, args.vocab)
  examples = [batching.Example(tokens=p) for p in prompts]
  sampler = sampling.Sampler(
      config, length_buckets=(args.prompt_len,), patch_buckets=(0,),
      batch_buckets=(args.batch,), max_cache=args.prompt_len + args.new_tokens,
      first_stage_tokens=args.first_stage_tokens)
  sp = sampling.SamplingParams(max_new_tokens=args.new_tokens, greedy=True)

  def run_evejax(s=sampler):
    start = time.perf_counter()
    out = s.generate(params, examples, sp, seed=0)
    return time.perf_counter() - start, out

  scanned = None
  if args.compare_scan:
    scanned = sampling.Sampler(
        config, length_buckets=(args.prompt_len,), patch_buckets=(0,),
        batch_buckets=(args.batch,), max_cache=args.prompt_len + args.new_tokens,
        first_stage_tokens=args.first_stage_tokens, unroll_layers=False)
    run_evejax(scanned)  # compile

  ids = torch.tensor(prompts, dtype=torch.long)
  attn = torch.ones_like(ids)

  def run_hf(n=args.new_tokens):
    start = time.perf_counter()
    with torch.no_grad():
      out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
    return time.perf_counter() - start, out[:, args.prompt_len:].numpy()

  first, _ = run_evejax()
  compile_s = sampler.compile_seconds
  # torch's best thread count: on a shared 2-core machine, 2 spinning OpenMP
  # threads can be several times slower than 1. Give transformers the faster.
  counts = sorted({1, os.cpu_count() or 1}) if args.torch_threads == 0 else [
      args.torch_threads]
  trial = {}
  for n in counts:
    torch.set_num_threads(n)
    run_hf(2)  # warm-up (allocator, kernels)
    trial[n] = min(run_hf(16)[0] for _ in range(2))
  threads = min(trial, key=trial.get)
  torch.set_num_threads(threads)
  ej_times, hf_times, scan_times = [], [], []
  for _ in range(args.repeats):
    t, ej_out = run_evejax()
    ej_tokens = ej_out.tokens
    ej_times.append(t)
    t, hf_tokens = run_hf()
    hf_times.append(t)
    if scanned is not None:
      t, scan_out = run_evejax(scanned)
      scan_times.append(t)
      if not np.array_equal(scan_out.tokens, ej_tokens):
        print("WARNING: scanned and unrolled greedy tokens differ")
  total = args.batch * args.new_tokens
  ej, th = statistics.median(ej_times), statistics.median(hf_times)
  agree = float(np.mean(ej_tokens == hf_tokens))
  # Greedy paths diverge after the first differing token: count the prefix.
  same_prefix = np.mean([np.argmin(np.append(a == b, False))
                         for a, b in zip(ej_tokens, hf_tokens)])
  print(f"evejax:       {total / ej:10.1f} tokens/s  ({ej:.3f} s; first call "
        f"{first:.1f} s of which compile {compile_s:.1f} s, "
        f"{sampler.num_compiles} programs)")
  print(f"occupancy:    {ej_out.stats.occupancy:10.1%} of rows x "
        f"{ej_out.stats.decode_steps} decode steps")
  trials = ", ".join(f"{k}: {v:.2f} s" for k, v in trial.items())
  print(f"transformers: {total / th:10.1f} tokens/s  ({th:.3f} s; torch "
        f"threads {threads}, from 16-token trials {trials})")
  print(f"ratio evejax / transformers: {th / ej:.2f}x   (rounds: evejax "
        f"{[round(x, 3) for x in ej_times]}, transformers "
        f"{[round(x, 3) for x in hf_times]})")
  print(f"greedy agreement: {agree:.1%} of tokens; identical prefix "
        f"{same_prefix:.1f} of {args.new_tokens} tokens on average")
  if scanned is not None:
    sc = statistics.median(scan_times)
    print(f"evejax scanned: {total / sc:8.1f} tokens/s  ({sc:.3f} s; rounds "
          f"{[round(x, 3) for x in scan_times]}); unrolled / scanned: "
          f"{sc / ej:.2f}x, scanned / transformers: {th / sc:.2f}x")
  if args.ceiling:
    dots, read = _ceilings(config, params, args.batch, args.new_tokens)
    hf_rate = total / th
    for what, sec in (("its matmuls alone (XLA's kernels)", dots),
                      ("one plain read of its weights", read)):
      print(f"a decode step no faster than {what}: {sec * 1e3:.2f} ms -> at "
            f"most {args.batch / sec:.0f} tokens/s = "
            f"{args.batch / sec / hf_rate:.2f}x transformers")


def _min_seconds(fn, *args, repeats: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def _ceilings(config, params, batch: int, steps: int) -> tuple[float, float]:
  """(s/step of the decode step's matmuls alone, s to read their bytes once).

  The matmuls are chained through the hidden state as in a decode step
  (q/k/v/o, gate/up/down per layer, then the LM head), with no attention,
  norms or sampling: no decode step on these weights can be faster with
  XLA's kernels. The read is one reduction over an array of the same size.
  """
  text = vlm.inference_params(params, config)["text"]
  t = config.text
  head = (text["embed"]["embedding"] if t.tie_word_embeddings
          else text["lm_head"]["kernel"].T)

  def step(_, h):
    for i in range(t.num_layers):
      w = text[f"layers_{i}"]
      q, k, v = (jnp.einsum("bd,dhk->bhk", h, w[n]["kernel"]) for n in "qkv")
      h = h + jnp.einsum("bhk,hkd->bd", q, w["o"]["kernel"])
      h = h + 1e-6 * (k.mean() + v.mean())
      mlp = w["mlp"]
      gate_up = (h @ mlp["gate"]["kernel"]) * (h @ mlp["up"]["kernel"])
      h = h + gate_up @ mlp["down"]["kernel"]
    return h + 1e-6 * jnp.einsum("bd,vd->bv", h, head)[:, :t.hidden_size]

  h0 = jnp.ones((batch, t.hidden_size), jnp.dtype(config.dtype))
  loop = jax.jit(lambda h: jax.lax.fori_loop(0, steps, step, h))
  dots = _min_seconds(loop, h0) / steps
  nbytes = sum(x.size * x.dtype.itemsize for name, x in
               jax.tree_util.tree_leaves_with_path(text)
               if "embed" not in jax.tree_util.keystr(name)
               or t.tie_word_embeddings)
  flat = jnp.ones((nbytes // 4,), jnp.float32)
  read = _min_seconds(jax.jit(jnp.sum), flat, repeats=5)
  return dots, read


def _equal_size_configs(args) -> list[tuple[str, presets.ModelConfig]]:
  """Qwen3.5 and Qwen3-VL bench models of (nearly) equal parameter count:
  the same shape flags, Qwen3.5's MLP narrowed by what its DeltaNet and gated
  attention add (its mixers are wider than plain attention)."""
  count = lambda c: _count(jax.eval_shape(
      lambda: vlm.init_params(c, jax.random.key(0)))["text"])
  vl = bench_config(args, "qwen3_vl_tiny")
  target = count(vl)
  widths = range(64, args.intermediate + 1, 64)
  best = min(widths, key=lambda f: abs(
      count(bench_config(args, "qwen3_5_tiny", f)) - target))
  return [("Qwen3-VL", vl), ("Qwen3.5", bench_config(args, "qwen3_5_tiny", best))]


def run_context(args) -> None:
  """Decode tokens/s at each --context length, Qwen3.5 vs Qwen3-VL.

  Per model and context L: prefill L-token prompts once (`vlm.prefill`, the
  unrolled sampling layout), then time --new_tokens greedy decode steps in
  one compiled loop (`vlm.decode_step`, the step the Sampler's loop runs),
  best of --repeats. The KV cache holds exactly L + new_tokens slots, as the
  Sampler's last stage does.
  """
  lengths = [int(x) for x in args.context.split(",")]
  n, b = args.new_tokens, args.batch
  dtype = jnp.dtype(args.dtype)
  print(f"decode tokens/s by context length: batch {b}, {n} greedy steps, "
        f"{args.dtype}, jax on {jax.devices()[0].platform} "
        f"({os.cpu_count()} CPUs)")
  rows = []
  for name, config in _equal_size_configs(args):
    config = config.replace(dtype=args.dtype)
    params = jax.jit(vlm.init_params, static_argnums=(0, 2))(
        config, jax.random.key(0), dtype)
    size = _count(params["text"])
    fast = vlm.inference_params(params, config)
    rates = []
    for length in lengths:
      tokens = _prompts(b, length, config.text.vocab_size)
      inputs = batching.make_batch(
          [batching.Example(tokens=t) for t in tokens], vision=config.vision,
          image_token_id=config.image_token_id,
          vision_start_id=config.vision_start_token_id, pad_id=0,
          length_buckets=(length,), patch_buckets=(0,), batch_buckets=(b,),
          padding="left")
      logits, cache = jax.jit(vlm.prefill, static_argnums=(1, 3))(
          fast, config, jax.tree.map(jnp.asarray, inputs), length + n)

      def decode(p, logits, cache):
        def body(_, carry):
          tok, c = carry
          lg, c = vlm.decode_step(p, config, tok, c)
          return jnp.argmax(lg, -1).astype(jnp.int32), c
        return jax.lax.fori_loop(0, n, body, (jnp.argmax(logits, -1).astype(
            jnp.int32), cache))

      loop = jax.jit(decode)
      sec = _min_seconds(loop, fast, logits, cache, repeats=args.repeats)
      rates.append(b * n / sec)
      del cache
    rows.append((name, size, rates))
    cells = "  ".join(f"{L}: {r:8.1f}" for L, r in zip(lengths, rates))
    print(f"{name:9s} {size / 1e6:5.1f}M text params  tokens/s  {cells}  "
          f"({lengths[-1]} / {lengths[0]}: {rates[-1] / rates[0]:.2f}x)",
          flush=True)


def run_slots(args) -> None:
  """Static chunks vs slot decoding on long-tailed lengths (module docstring)."""
  config = bench_config(args)
  params = jax.jit(vlm.init_params, static_argnums=(0, 2))(
      config, jax.random.key(0), jnp.dtype(args.dtype))
  prompts = [batching.Example(tokens=t) for t in
             _prompts(args.prompts, args.prompt_len, config.text.vocab_size)]
  # Static chunks take --batch prompts; a refill prefills the smallest of these
  # that holds the prompts it inserts.
  buckets = tuple(b for b in (2 ** i for i in range(16)) if b <= args.batch and not args.batch % b)
  kw = dict(length_buckets=(args.prompt_len,), patch_buckets=(0,),
            batch_buckets=buckets, max_cache=args.prompt_len + args.new_tokens,
            first_stage_tokens=args.first_stage_tokens)
  static = sampling.Sampler(config, **kw)
  slots = sampling.Sampler(config, decode_mode="slots", refill_every=args.refill_every,
                           refill_fraction=args.refill_fraction, **kw)
  sp = sampling.SamplingParams(max_new_tokens=args.new_tokens, group_size=args.group)
  # Every mean_tokens-th id ends a row: about 1 / mean_tokens of the draws of a
  # random model, whose next-token law is spread over the whole vocabulary.
  sp = sp.replace(eos_ids=tuple(range(8, config.text.vocab_size, args.mean_tokens)))
  outs, times = {}, {"static": [], "slots": []}
  for name, s in (("static", static), ("slots", slots)):
    outs[name] = s.generate(params, prompts, sp, seed=0)   # compiles
  for _ in range(args.repeats):   # interleaved: load from elsewhere hits both alike
    for name, s in (("static", static), ("slots", slots)):
      start = time.perf_counter()
      s.generate(params, prompts, sp, seed=0)
      times[name].append(time.perf_counter() - start)
  lengths = outs["static"].lengths
  print(f"model: {_count(params) / 1e6:.1f}M params, {args.dtype}; {args.prompts} prompts "
        f"x G={args.group}, batch buckets {buckets}, prompt {args.prompt_len}, up to "
        f"{args.new_tokens} new tokens; {len(sp.eos_ids)} EOS ids: lengths mean "
        f"{lengths.mean():.1f}, median {np.median(lengths):.0f}, max {lengths.max()}; "
        f"jax on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  for name in ("static", "slots"):
    st = outs[name].stats
    sec = statistics.median(times[name])
    print(f"{name:7s} occupancy {st.occupancy:6.1%}  decode steps {st.decode_steps:5d}  "
          f"{sec:7.3f} s  {lengths.sum() / sec:8.1f} tokens/s  (rounds "
          f"{[round(t, 3) for t in times[name]]})")
  same = np.array_equal(outs["static"].tokens, outs["slots"].tokens)
  ratio = statistics.median(times["static"]) / statistics.median(times["slots"])
  print(f"time static / slots: {ratio:.2f}x; "
        f"identical rows: {same}; programs: static {static.num_compiles}, "
        f"slots {slots.num_compiles}")


def _plain_select(logits, keys, sp):
  """The obvious JAX forms of `sample_tokens` (the peer of --select)."""
  scaled = logits / sp.temperature
  if sp.greedy:
    tokens = jnp.argmax(logits, axis=-1)
  else:
    cand, ids = scaled, None
    if sp.top_k:
      cand, ids = jax.lax.top_k(scaled, sp.top_k)
    elif sp.top_p < 1.0:
      ids = jnp.argsort(-scaled, axis=-1)
      cand = jnp.take_along_axis(scaled, ids, axis=-1)
    if sp.top_p < 1.0:
      probs = jax.nn.softmax(cand, axis=-1)
      before = jnp.cumsum(probs, axis=-1) - probs
      cand = jnp.where(before < sp.top_p, cand, -jnp.inf)
    choice = jax.vmap(jax.random.categorical)(keys, cand)
    tokens = choice if ids is None else jnp.take_along_axis(
        ids, choice[:, None], axis=-1)[:, 0]
  lp = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1),
                           tokens[:, None], axis=-1)[:, 0]
  return tokens, lp


def run_select(args) -> None:
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((args.batch, args.vocab)) * 6,
                       jnp.float32)
  keys = jax.random.split(jax.random.key(0), args.batch)
  print(f"token selection for {args.batch} rows x {args.vocab} vocabulary on "
        f"{jax.devices()[0].platform}, ms per decode step (best of "
        f"{args.repeats + 2}):")
  cases = (("greedy", dict(greedy=True)), ("T=0.7", dict(temperature=0.7)),
           ("top-k 50", dict(top_k=50)), ("top-p 0.9", dict(top_p=0.9)))
  for name, kw in cases:
    sp = sampling.SamplingParams(max_new_tokens=1, **kw)
    ours = jax.jit(lambda x, k, sp=sp: sampling.sample_tokens(x, k, sp))
    plain = jax.jit(lambda x, k, sp=sp: _plain_select(x, k, sp))
    t_ours = _min_seconds(ours, logits, keys, repeats=args.repeats + 2)
    t_plain = _min_seconds(plain, logits, keys, repeats=args.repeats + 2)
    print(f"  {name:10s} evejax {t_ours * 1e3:8.2f}   plain JAX "
          f"{t_plain * 1e3:8.2f}   ratio {t_plain / t_ours:6.1f}x")


def _bandwidth(args) -> tuple[float, str]:
  if args.bandwidth_gbs:
    return args.bandwidth_gbs * 1e9, "--bandwidth_gbs"
  kind = jax.devices()[0].device_kind
  for key, bw in BANDWIDTH:
    if key.lower() in kind.lower():
      return bw, kind
  raise SystemExit(f"Unknown HBM bandwidth for device kind {kind!r}; pass "
                   "--bandwidth_gbs.")


def run_roofline(args) -> None:
  bandwidth, source = _bandwidth(args)
  config = presets.get_preset(args.preset).replace(dtype=args.dtype)
  dtype = jnp.dtype(args.dtype)
  init = jax.jit(vlm.init_params, static_argnums=(0, 2))
  params = init(config, jax.random.key(0), dtype)
  t = config.text
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize
                            for x in jax.tree.leaves(tree))
  # A step reads every text weight once, except an untied input embedding,
  # of which it gathers only B rows.
  text_bytes = nbytes(params["text"])
  if not t.tie_word_embeddings:
    text_bytes -= nbytes(params["text"]["embed"])
  cache_size = args.prompt_len + args.new_tokens
  # Attention reads every slot of the current stage's cache (masked or not).
  ends = sampling.stage_ends(args.new_tokens, args.first_stage_tokens)
  slots = np.mean([args.prompt_len + next(e for e in ends if e > i)
                   for i in range(1, args.new_tokens)])
  kv_bytes = int(2 * t.num_layers * args.batch * slots * t.num_kv_heads
                 * t.head_dim * dtype.itemsize)
  prompts = _prompts(args.batch, args.prompt_len, t.vocab_size)
  examples = [batching.Example(tokens=p) for p in prompts]
  print(f"{args.preset} ({dtype.name}) on {jax.devices()[0].device_kind}: "
        f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new")
  print(f"bytes/step: weights {text_bytes / 1e9:.3f} GB + KV {kv_bytes / 1e9:.3f}"
        f" GB; bandwidth {bandwidth / 1e12:.2f} TB/s ({source})")
  variants = [("unrolled", True)] + ([("scanned", False)]
                                     if args.compare_scan else [])
  for name, unroll in variants:
    sampler = sampling.Sampler(
        config, length_buckets=(args.prompt_len,), patch_buckets=(0,),
        batch_buckets=(args.batch,), max_cache=cache_size,
        first_stage_tokens=args.first_stage_tokens, unroll_layers=unroll)

    def timed(n):
      sp = sampling.SamplingParams(max_new_tokens=n, greedy=True)
      sampler.generate(params, examples, sp, seed=0)  # compile
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        sampler.generate(params, examples, sp, seed=0)
        times.append(time.perf_counter() - start)
      return min(times)

    t_full, t_one = timed(args.new_tokens), timed(1)
    step = (t_full - t_one) / (args.new_tokens - 1)
    frac = (text_bytes + kv_bytes) / step / bandwidth
    print(f"{name}: decode step {step * 1e3:.3f} ms; {args.batch / step:.0f} "
          f"tokens/s; prefill+1 token {t_one * 1e3:.1f} ms; compile "
          f"{sampler.compile_seconds:.1f} s; roofline fraction: {frac:.1%}")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
  p.add_argument("--vocab", type=int, default=None,
                 help="default 16384 (151936 with --select)")
  p.add_argument("--hidden", type=int, default=512)
  p.add_argument("--intermediate", type=int, default=1536)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv_heads", type=int, default=2)
  p.add_argument("--base_preset", default="tiny",
                 help="CPU mode: the family and vision tower of the model "
                      "(tiny: Qwen2.5-VL, qwen3_vl_tiny: Qwen3-VL, "
                      "qwen3_5_tiny: Qwen3.5)")
  p.add_argument("--context", default="",
                 help="e.g. 1024,8192: decode tokens/s at these context "
                      "lengths, Qwen3.5 vs Qwen3-VL of equal size")
  p.add_argument("--first_stage_tokens", type=int, default=256,
                 help="Sampler's first decode stage (0: one full cache)")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="0: the faster of 1 and all CPUs, tried on 16 tokens")
  p.add_argument("--compare_scan", action="store_true",
                 help="also time the sampler on scanned (stacked) layers")
  p.add_argument("--ceiling", action="store_true",
                 help="also time the step's matmuls alone and a plain weight read")
  p.add_argument("--select", action="store_true",
                 help="time token selection alone on --batch x --vocab logits")
  p.add_argument("--slots", action="store_true",
                 help="static chunks vs slot decoding on long-tailed lengths")
  p.add_argument("--prompts", type=int, default=32, help="--slots: prompts per call")
  p.add_argument("--group", type=int, default=1, help="--slots: completions per prompt")
  p.add_argument("--mean_tokens", type=int, default=32,
                 help="--slots: about the mean completion length (EOS rate 1 / this)")
  p.add_argument("--refill_fraction", type=float, default=0.25)
  p.add_argument("--refill_every", type=int, default=64)
  p.add_argument("--roofline", action="store_true",
                 help="random --preset model on the accelerator, HBM roofline")
  p.add_argument("--preset", default="qwen2_5_vl_3b")
  p.add_argument("--bandwidth_gbs", type=float, default=0.0,
                 help="device bandwidth in GB/s (default: by device kind)")
  args = p.parse_args(argv)
  if args.select:
    args.batch = args.batch or 64
    args.vocab = args.vocab or 151936
    run_select(args)
  elif args.context:
    args.batch = args.batch or 4
    args.vocab = args.vocab or 16384
    args.dtype = args.dtype or "float32"
    run_context(args)
  elif args.slots:
    args.batch = args.batch or 8
    args.vocab = args.vocab or 16384
    args.dtype = args.dtype or "float32"
    run_slots(args)
  elif args.roofline:
    args.batch = args.batch or 64
    args.dtype = args.dtype or "bfloat16"
    run_roofline(args)
  else:
    args.batch = args.batch or 8
    args.vocab = args.vocab or 16384
    args.dtype = args.dtype or "float32"
    run_cpu(args)


if __name__ == "__main__":
  main()
