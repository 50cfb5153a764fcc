r"""Train-step speed: step time, tokens/s and model FLOPs utilisation (MFU).

Times the real `Learner.step("grpo", ...)` (micro-batches, optimizer, metrics to host)
on a random model of a preset's shape with synthetic batches:

  python -m evejax.tools.bench_train --preset qwen2_5_vl_3b --seq 2048 --batch 8
  python -m evejax.tools.bench_train --preset qwen3_vl_8b --seq 2048 --batch 8 --images 1
  python -m evejax.tools.bench_train --preset qwen2_5_vl_3b --seq 2048 --attention cudnn
  python -m evejax.tools.bench_train --preset tiny --seq 256 --batch 8   # CPU smoke run
  python -m evejax.tools.bench_train --compare tunix --prompts 8 --group 4 [--kl_coef 0.04]
      [--ceiling]   # against google-tunix's GRPO step on the same weights and batch (CPU)

MFU = model FLOPs per step / step time / (devices x peak FLOP/s). Model FLOPs
are the matmul FLOPs of forward + backward (3x forward) of the text decoder,
LM head and vision tower, with causal attention counted once (half the
square); recomputation (remat) is not counted, as is conventional. The peak is
the accelerator's dense bf16 number (`--peak_tflops` overrides it; CPUs have
none). A reference (KL) forward pass is added when `--kl_coef` > 0.

--compare tunix runs `evejax.tools.train_peer` instead: the same GRPO step
against tunix's on a Qwen2-shaped text model (the shape flags below), loss
agreement first, then alternating rounds; --ceiling adds the step's matmuls
alone. tunix must be installed in this environment (not an evejax dependency).
"""
from __future__ import annotations

import dataclasses
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from evejax import parallel
from evejax.models import attention
from evejax.models import presets
from evejax.models import vlm
from evejax.rl import learner as learner_lib
from evejax.rl import synthetic
from evejax.tools.flops import forward_flops

_PRESET = flags.DEFINE_string("preset", "qwen2_5_vl_3b", "Model preset.")
_LAYERS = flags.DEFINE_integer("layers", 0, "Override the text decoder depth (0: preset's).")
_VISION_DEPTH = flags.DEFINE_integer("vision_depth", 0, "Override the ViT depth (0: preset's).")
_SEQ = flags.DEFINE_integer("seq", 2048, "Tokens per row.")
_BATCH = flags.DEFINE_integer("batch", 0, "Rows per step (default: 1 per data-parallel "
                              "device per micro-batch).")
_MICRO = flags.DEFINE_integer("micro_batches", 1, "Micro-batches per step.")
_IMAGES = flags.DEFINE_integer("images", 0, "Images per row.")
_SIDE = flags.DEFINE_integer("image_side", 448, "Image side in pixels (multiple of "
                             "patch x merge size: 28 Qwen2.5-VL, 32 Qwen3-VL).")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", "bfloat16", "float32 | bfloat16.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Activation dtype.")
_REMAT = flags.DEFINE_bool("remat", True, "Recompute blocks in the backward pass.")
_ATTENTION = flags.DEFINE_enum("attention", "auto", presets.ATTENTION_IMPLEMENTATIONS,
                               "Attention implementation (auto: splash on TPU, cudnn on "
                               "GPU, xla elsewhere).")
_CHUNK = flags.DEFINE_integer("logprob_chunk", 1024, "Log-softmax sequence chunk (0: off).")
_KL = flags.DEFINE_float("kl_coef", 0.0, "> 0 adds the reference pass to every step.")
_MESH = flags.DEFINE_string("mesh", "fsdp=-1", "Mesh axes, e.g. 'fsdp=8' or 'data=2,fsdp=4'.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first compiles).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device (0: by device kind).")
_COMPARE = flags.DEFINE_enum("compare", "", ["", "tunix"], "Time against this peer's "
                             "GRPO step on the same weights and batch (train_peer).")
_CEILING = flags.DEFINE_bool("ceiling", False, "With --compare: also time the step's "
                             "matmuls alone.")
_PROMPTS = flags.DEFINE_integer("prompts", 8, "--compare: prompts per step.")
_GROUP = flags.DEFINE_integer("group", 4, "--compare: completions per prompt.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "--compare: prompt tokens.")
_COMPLETION_LEN = flags.DEFINE_integer("completion_len", 192, "--compare: completion "
                                       "tokens at most (each row 3/4 to all of it).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "--compare: alternating timed rounds.")
_HIDDEN = flags.DEFINE_integer("hidden", 512, "--compare: model width (41M model).")
_INTERMEDIATE = flags.DEFINE_integer("intermediate", 1536, "--compare: MLP width.")
_HEADS = flags.DEFINE_integer("heads", 8, "--compare: attention heads.")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 2, "--compare: key/value heads.")
_VOCAB = flags.DEFINE_integer("vocab", 16384, "--compare: vocabulary.")
_SET = flags.DEFINE_multi_string("set", [], "--compare: evejax learner config override "
                                 "key=value (e.g. unroll_layers=true), repeatable.")
_MEMORY = flags.DEFINE_bool("memory", False, "--compare: print evejax's compiled step "
                            "memory instead of timing (nothing runs; no peer needed).")

# Dense bf16 peak TFLOP/s per device, by a substring of jax's device_kind.
PEAK_TFLOPS = (
    ("H200", 989.4), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
    ("TPU v6", 918.0), ("TPU v5p", 459.0), ("TPU v5", 197.0), ("TPU v4", 275.0),
)


def _parse_mesh(spec: str) -> dict[str, int]:
  out = {}
  for part in filter(None, spec.split(",")):
    name, _, size = part.partition("=")
    out[name.strip()] = int(size)
  return out


def _overrides(items) -> dict:
  """{'unroll_layers': True, ...} from ['unroll_layers=true', ...]."""
  out = {}
  for item in items:
    key, _, value = item.partition("=")
    low = value.lower()
    out[key] = (low == "true" if low in ("true", "false")
                else int(value) if value.lstrip("-").isdigit() else value)
  return out


def main(argv):
  del argv
  if _COMPARE.value:
    from evejax.tools import train_peer  # pylint: disable=g-import-not-at-top
    config = train_peer.bench_model(_HIDDEN.value, _INTERMEDIATE.value, _LAYERS.value or 8,
                                    _HEADS.value, _KV_HEADS.value, _VOCAB.value)
    shape = dict(prompts=_PROMPTS.value, group=_GROUP.value, prompt_len=_PROMPT_LEN.value,
                 completion_len=_COMPLETION_LEN.value, overrides=_overrides(_SET.value))
    if _MEMORY.value:
      train_peer.step_memory(config, **shape)
    else:
      train_peer.compare(config, kl_coef=_KL.value, rounds=_ROUNDS.value,
                         ceiling=_CEILING.value, **shape)
    return
  overrides = dict(dtype=_DTYPE.value, remat=_REMAT.value, attention=_ATTENTION.value)
  config = presets.get_preset(_PRESET.value, **overrides)
  if _LAYERS.value:
    depth = dict(num_layers=_LAYERS.value)
    if hasattr(config.text, "layer_types"):  # rebuilt for the new depth
      depth["layer_types"] = ()
    config = config.replace(text=dataclasses.replace(config.text, **depth))
  if _VISION_DEPTH.value:
    config = config.replace(vision=config.vision.with_depth(_VISION_DEPTH.value))
  mesh = parallel.make_mesh(_parse_mesh(_MESH.value))
  devices = mesh.devices.size
  data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = _BATCH.value or _MICRO.value * data_shards

  cfg = learner_lib.default_train_config()
  cfg.update_from_flattened_dict({
      "micro_batches": _MICRO.value,
      "logprob_chunk": _CHUNK.value, "loss.kl_coef": _KL.value, "optimizer.lr": 1e-6})
  axes = vlm.param_axes(config)
  shapes = jax.eval_shape(lambda: vlm.init_params(config, jax.random.PRNGKey(0)))
  shardings = parallel.shardings_for(axes, mesh, shapes_tree=shapes)
  params = jax.jit(vlm.init_params, static_argnums=(0, 2), out_shardings=shardings)(
      config, jax.random.PRNGKey(0), jnp.dtype(_PARAM_DTYPE.value))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  learner = learner_lib.Learner(config, cfg, params, mesh=mesh,
                                param_dtype=_PARAM_DTYPE.value)
  del params
  batches = [synthetic.random_batch(config, rows, _SEQ.value, images=_IMAGES.value,
                                    image_side=_SIDE.value, seed=i) for i in range(2)]

  kind = jax.devices()[0].device_kind
  print(f"{_PRESET.value}: {n_params / 1e9:.3f}B params ({config.text.num_layers} text "
        f"layers, ViT depth {config.vision.depth}), params {_PARAM_DTYPE.value}, "
        f"activations {_DTYPE.value}, remat={_REMAT.value}, attention "
        f"{_ATTENTION.value} -> {attention.resolve(_ATTENTION.value)}")
  print(f"{devices} x {kind}, mesh {dict(mesh.shape)}; {rows} rows x {_SEQ.value} tokens, "
        f"{_IMAGES.value} image(s) of {_SIDE.value}px per row, {_MICRO.value} "
        f"micro-batch(es), kl_coef={_KL.value}", flush=True)

  start = time.perf_counter()
  learner.step("grpo", batches[0])
  print(f"first step (compile + run): {time.perf_counter() - start:.1f} s", flush=True)
  for i in range(_WARMUP.value - 1):
    learner.step("grpo", batches[(i + 1) % 2])
  times = []
  for i in range(_STEPS.value):
    start = time.perf_counter()
    learner.step("grpo", batches[i % 2])   # returns host floats: the step has finished
    times.append(time.perf_counter() - start)

  step = statistics.median(times)
  tokens = rows * _SEQ.value
  fwd = forward_flops(config, rows, _SEQ.value, _IMAGES.value, _SIDE.value)
  flops = 3 * fwd + (fwd if _KL.value > 0 else 0)
  achieved = flops / step / devices / 1e12
  peak = _PEAK.value or next((p for k, p in PEAK_TFLOPS if k in kind), 0.0)
  print(f"step time: median {step * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, max "
        f"{max(times) * 1e3:.1f}) over {len(times)} steps")
  print(f"tokens/s: {tokens / step:,.0f} ({tokens / step / devices:,.0f} per device)")
  print(f"model FLOPs/step: {flops / 1e12:.3g} TFLOP; achieved {achieved:.3g} TFLOP/s "
        "per device")
  if peak:
    print(f"MFU: {100 * achieved / peak:.1f}% of {peak:g} TFLOP/s ({kind}, dense bf16)")
  else:
    print(f"MFU: n/a (no known peak for {kind!r}; pass --peak_tflops)")


if __name__ == "__main__":
  app.run(main)
