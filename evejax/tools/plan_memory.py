r"""Per-device memory of a train step and of sampling, planned on CPU before
renting hardware.

Compiles (ahead of time, nothing is allocated) the real learner step for a
model preset on a mesh of fake CPU devices and prints what one device holds:
policy params, optimizer state, reference params, and the step's peak from
XLA's buffer assignment. Then the same for one `Sampler.generate` chunk
(prefill and decode programs, with the train state resident beside them:
the decode copy of the text weights, the KV cache for prompts x G rows at
the full token budget, temporaries); then which accelerators the larger of
the two fits.

  python -m evejax.tools.plan_memory --config qwen2_5_vl_7b --mesh fsdp=8
  python -m evejax.tools.plan_memory --config configs/eve.py:qwen2_5_vl_7b \
      --mesh fsdp=4 --batch 32 --seq 4096

`--config` is a model preset name or a config file (`path.py[:arg]`), whose
model, mesh and train blocks are then used. Which compiler plans:

  default           the CPU compiler on fake CPU devices: GPU/TPU compilers
                    fuse differently (and use flash attention), so treat temp
                    memory as an order-of-magnitude guide; params, optimizer
                    and reference bytes are exact. The CPU compiler also runs
                    bf16 matmuls in f32 (an f32 copy of each weight it
                    multiplies), so with bf16 weights the temporaries are an
                    upper bound.
  --target tpu:v5p-16   the TPU compiler itself, on compile-only devices of that
                    slice (libtpu: `pip install -e '.[tpu]'`; no TPU needed),
                    splash attention as the Mosaic kernel: the same path as
                    `evejax.tools.aot_compile`, which compiles every program of
                    a run rather than one step and one chunk.
"""
from __future__ import annotations

import contextlib
import math

from absl import app
from absl import flags
import jax
import ml_collections

from evejax import config_utils

_CONFIG = flags.DEFINE_string("config", "qwen2_5_vl_7b",
                              "Model preset name, or a config file path.py[:arg].")
_MESH = flags.DEFINE_string("mesh", "",
                            "Mesh, e.g. 'fsdp=8' or 'data=2,fsdp=4' (default: the "
                            "config's, or fsdp=8 for a preset).")
_BATCH = flags.DEFINE_integer("batch", 0, "Rows per train step (default: one row per "
                              "device per micro-batch).")
_SEQ = flags.DEFINE_integer("seq", 0, "Tokens per row (default: the config's largest "
                            "length bucket, else 4096).")
_IMAGES = flags.DEFINE_integer("images", 1, "Images per row.")
_SIDE = flags.DEFINE_integer("image_side", 448, "Image side in pixels (multiple of 28).")
_MICRO = flags.DEFINE_integer("micro_batches", 0, "Micro-batches (default: config's, or 1).")
_KIND = flags.DEFINE_enum("kind", "grpo", ["grpo", "sft", "reinforce"], "Step kind.")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", "", "float32 | bfloat16 (default: "
                                   "config's, or bfloat16).")
_DTYPE = flags.DEFINE_string("dtype", "", "Activation dtype (default: config's, or bfloat16).")
_REMAT = flags.DEFINE_bool("remat", None, "Recompute blocks in the backward pass "
                           "(default: config's, or True).")
_ATTENTION = flags.DEFINE_enum(
    "attention", None, ["auto", "xla", "cudnn", "splash"],
    "Attention (default: config's, or auto). On the CPU compiler splash is planned "
    "with its Pallas kernel in interpret mode (a flash kernel's memory); cudnn and "
    "auto plan as xla.")
_KL = flags.DEFINE_float("kl_coef", None, "KL coefficient; > 0 keeps reference params "
                         "(default: config's, or 1e-3).")
_SAMPLE = flags.DEFINE_bool("sample", True, "Also plan one Sampler.generate chunk.")
_SAMPLE_PROMPTS = flags.DEFINE_integer(
    "sample_prompts", 0, "Prompts per generate chunk (default: the config's largest "
    "processing.batch_buckets, else 8).")
_SAMPLE_GROUP = flags.DEFINE_integer(
    "sample_group", 0, "Completions per prompt (default: the config's largest of "
    "eve.challenger_group / solver_group / difficulty_samples, else 8).")
_SAMPLE_LENGTH = flags.DEFINE_integer("sample_length", 0, "Prompt length bucket "
                                      "(default: --seq's).")
_SAMPLE_NEW = flags.DEFINE_integer(
    "sample_new_tokens", 0, "Token budget per completion (default: the largest "
    "max_new_tokens of the config's sampling roles, else 1024).")
_CHUNK = flags.DEFINE_integer("logprob_chunk", None, "Log-softmax chunk (default: config's, "
                              "or 1024).")
_TARGET = flags.DEFINE_string("target", "", "Plan with the target's own compiler on its "
                              "compile-only devices, e.g. tpu:v5p-16 (default: the CPU "
                              "compiler on fake CPU devices).")

GiB = 1024 ** 3


def _parse_mesh(spec: str) -> dict[str, int]:
  from evejax.tools import targets  # pylint: disable=g-import-not-at-top
  try:
    return targets.parse_mesh(spec)
  except targets.TargetError as e:
    raise app.UsageError(str(e)) from None


def _load(spec: str) -> tuple[str, ml_collections.ConfigDict | None]:
  """(preset name, config or None) from --config: a model preset or path.py[:preset]."""
  if not spec.partition(":")[0].endswith(".py"):
    return spec, None
  try:
    config = config_utils.load_config(spec)
  except config_utils.ConfigError as e:
    raise app.UsageError(f"--config {spec}: {e}") from None
  return config.model.preset, config


def _get(config, path: str, default):
  node = config
  for part in path.split("."):
    if node is None or part not in node:
      return default
    node = node[part]
  return node


def _gib(n: float) -> str:
  return f"{n / GiB:8.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:8.2f} MiB"


def _peak(stats) -> int:
  from evejax.tools import targets  # pylint: disable=g-import-not-at-top
  return targets.program_bytes(stats)


def main(argv):
  del argv
  preset, config = _load(_CONFIG.value)
  mesh_axes = _parse_mesh(_MESH.value) if _MESH.value else (
      {k: int(v) for k, v in _get(config, "mesh", {}).items() if k != "rules"}
      if config is not None else {"fsdp": 8})
  known = [v for v in mesh_axes.values() if v > 0]
  if any(v == -1 for v in mesh_axes.values()):
    raise app.UsageError("--mesh: give every axis size explicitly (no -1) for a plan.")
  devices = math.prod(known)
  # Fake CPU devices, or a target's compile-only ones: set before the backend starts.
  jax.config.update("jax_platforms", "cpu")
  target_devices, platform = None, "cpu"
  if _TARGET.value:
    from evejax.tools import targets  # pylint: disable=g-import-not-at-top
    targets.setup_host()
    try:
      top = targets.topology(_TARGET.value)
      target_devices = targets.devices(top)
    except targets.TargetError as e:
      raise app.UsageError(str(e)) from None
    if devices > len(target_devices):
      raise app.UsageError(f"--mesh {mesh_axes} needs {devices} devices; {top.target} has "
                           f"{len(target_devices)}.")
    target_devices, platform = target_devices[:devices], top.chip.platform
    print(f"TPU compiler plan: compile-only devices of {top.target} "
          f"({devices} x {target_devices[0].device_kind})")
  else:
    jax.config.update("jax_num_cpu_devices", devices)
    from evejax.tools import targets  # pylint: disable=g-import-not-at-top
    print("CPU compiler plan (fake CPU devices; an upper bound for bf16)"
          + (": libtpu is installed, --target tpu:<slice> plans with the TPU compiler"
             if targets.libtpu_installed() else ""))
  from evejax.models import attention  # pylint: disable=g-import-not-at-top
  cache = contextlib.nullcontext() if target_devices is None else targets.no_persistent_cache()
  with attention.compiling_for(platform), cache:
    _plan(preset, config, mesh_axes, devices, target_devices)


def _plan(preset, config, mesh_axes, devices, target_devices):
  """Compiles and prints the plan (see the module docstring)."""
  from evejax.tools import targets  # pylint: disable=g-import-not-at-top

  # Imported here so that nothing touches a backend before the lines above.
  from evejax import parallel  # pylint: disable=g-import-not-at-top
  from evejax.models import presets, vlm  # pylint: disable=g-import-not-at-top
  from evejax.rl import learner as learner_lib, synthetic  # pylint: disable=g-import-not-at-top

  model_config = presets.get_preset(
      preset, dtype=_DTYPE.value or _get(config, "model.dtype", "bfloat16"),
      remat=_REMAT.value if _REMAT.value is not None else _get(config, "model.remat", True),
      attention=_ATTENTION.value or _get(config, "model.attention", "auto"))
  train = (config.train.to_dict() if config is not None and "train" in config else {})
  if _KIND.value != "sft":
    train["algorithm"] = _KIND.value
  train = learner_lib.merge_config(train)
  param_dtype = _PARAM_DTYPE.value or _get(config, "model.param_dtype", "bfloat16")
  if _MICRO.value:
    train.micro_batches = _MICRO.value
  if _KL.value is not None:
    train.loss.kl_coef = _KL.value
  train.logprob_chunk = (_CHUNK.value if _CHUNK.value is not None
                         else train.logprob_chunk or 1024)

  mesh = parallel.make_mesh(mesh_axes, devices=target_devices)
  rules = parallel.rules_from_config(config.mesh) if config is not None else None
  data_shards = math.prod(
      mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
  rows = _BATCH.value or train.micro_batches * data_shards
  seq = _SEQ.value or max(_get(config, "processing.length_buckets", (4096,)))

  params = jax.eval_shape(lambda: vlm.init_params(model_config, jax.random.PRNGKey(0)))
  learner = learner_lib.Learner(model_config, train, params, mesh=mesh, rules=rules,
                                param_dtype=param_dtype)
  # The other roles' train states stay resident while one role steps or samples.
  others = _plan_roles(config, model_config, mesh, learner) if config is not None else 0
  batch = synthetic.abstract_batch(model_config, rows, seq, images=_IMAGES.value,
                                   image_side=_SIDE.value)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"{preset}: {n_params / 1e9:.2f}B params ({param_dtype}), activations "
        f"{model_config.dtype}, remat={model_config.remat}, attention "
        f"{model_config.attention}; mesh "
        f"{dict(mesh.shape)} = {devices} devices")
  print(f"{_KIND.value} step: {rows} rows x {seq} tokens, {_IMAGES.value} image(s) of "
        f"{_SIDE.value}px per row, {train.micro_batches} micro-batch(es) -> "
        f"{rows // train.micro_batches // data_shards} row(s) per device per micro-batch; "
        f"kl_coef={train.loss.kl_coef}, freeze={tuple(train.freeze)}, "
        f"logprob_chunk={train.logprob_chunk}")

  state = learner.abstract_state()
  backbone_b = (parallel.per_device_bytes(learner.backbone)
                if learner.backbone is not None else 0)
  param_b = parallel.per_device_bytes(state.params)
  opt_b = parallel.per_device_bytes(state.opt_state)
  needs_ref = (_KIND.value == "reinforce" or train.loss.kl_coef > 0)
  ref_b = param_b if needs_ref and not train.ref_on_host and learner.owns_reference else 0

  print("compiling the step (a few minutes for large presets) ...", flush=True)
  step = learner.lower_step(_KIND.value, batch).compile().memory_analysis()
  step_peak = _peak(step)
  # The reference params stay resident through the step unless kept on host
  # (REINFORCE takes them as an argument, so they are already counted).
  total = step_peak + (ref_b if _KIND.value == "grpo" else 0) + others
  score_peak = 0
  if _KIND.value == "grpo" and train.loss.kl_coef > 0:
    score = learner.lower_score(batch).compile().memory_analysis()
    score_peak = _peak(score) + param_b + opt_b + others  # train states stay resident
    total = max(total, score_peak)

  print("\nper device:")
  if backbone_b:
    print(f"  frozen backbone      {_gib(backbone_b)}  (held once; also the KL reference)")
  print(f"  policy params        {_gib(param_b)}" + ("  (the LoRA adapter)" if backbone_b else ""))
  print(f"  optimizer state      {_gib(opt_b)}")
  print(f"  reference params     {_gib(ref_b)}"
        + ("  (host RAM)" if needs_ref and train.ref_on_host else ""))
  if others:
    print(f"  other roles' states  {_gib(others)}")
  print(f"  step: arguments      {_gib(step.argument_size_in_bytes)}")
  print(f"  step: temporaries    {_gib(step.temp_size_in_bytes)}")
  print(f"  step: peak           {_gib(step_peak)}")
  if score_peak:
    print(f"  reference pass peak  {_gib(score_peak)}  (with the train state resident)")
  print(f"  estimated peak       {_gib(total)}  ("
        + ("TPU compiler)" if target_devices else "CPU compiler: an upper bound for bf16)"))
  if _SAMPLE.value:
    weights = learner.backbone if learner.backbone is not None else state.params
    sample_peak = _plan_sampling(config, model_config, mesh, rules, weights,
                                 seq, param_b + opt_b + ref_b + others)
    total = max(total, sample_peak)
  print("\nfits (the larger peak under 90% of device memory):")
  for chip in targets.CHIPS.values():
    verdict = "yes" if total < 0.9 * chip.hbm_bytes else "no"
    print(f"  {chip.name:18s} {chip.hbm_bytes / GiB:5.0f} GiB {verdict:3s}  "
          f"({total / chip.hbm_bytes:5.0%} of memory)")


def _plan_roles(config, model_config, mesh, planned) -> int:
  """Prints every role's resident train state; returns the bytes of all but `planned`'s.

  With LoRA the backbone is counted once and the plan is put beside what the
  same roles would hold as full copies.
  """
  from evejax import parallel, recipes  # pylint: disable=g-import-not-at-top
  from evejax.recipes import runner  # pylint: disable=g-import-not-at-top
  recipe = recipes.resolve(config.recipe) if "recipe" in config else None
  if recipe is None:
    return 0
  policies = runner.abstract_policies(recipe, config, mesh)
  state_b = lambda l: parallel.per_device_bytes(l.abstract_state()) + (
      parallel.per_device_bytes(l.reference_params) if l.owns_reference else 0)
  print(f"\nroles of {config.recipe} (per device, resident through the run):")
  for name, l in policies.items():
    print(f"  {name:12s} train state {_gib(state_b(l))}"
          + ("  (adapter + its optimizer)" if l.lora is not None else ""))
  total = sum(state_b(l) for l in policies.values())
  first = next(iter(policies.values()))
  if first.backbone is not None:
    backbone = parallel.per_device_bytes(first.backbone)
    total += backbone
    full = copy_full = None
    with config.unlocked():
      rank, config.train.lora.rank = config.train.lora.rank, 0
      try:
        full = runner.abstract_policies(recipe, config, mesh)
      finally:
        config.train.lora.rank = rank
    copy_full = sum(state_b(l) for l in full.values())
    print(f"  backbone     {_gib(backbone)}  (one copy for all roles)")
    print(f"  all roles    {_gib(total)}; as {len(full)} full copies instead: {_gib(copy_full)}")
  else:
    print(f"  all roles    {_gib(total)}")
  return total - state_b(planned) - (parallel.per_device_bytes(planned.backbone)
                                     if planned.backbone is not None else 0)


def _plan_sampling(config, model_config, mesh, rules, params, seq: int,
                   resident: int) -> int:
  """Prints one generate chunk's plan; returns its peak with `resident` bytes."""
  from evejax import parallel, sampling  # pylint: disable=g-import-not-at-top
  prompts = _SAMPLE_PROMPTS.value or max(_get(config, "processing.batch_buckets", (8,)))
  block = _get(config, _get(config, "recipe", "") or "none", {}) or {}
  group = _SAMPLE_GROUP.value or max(
      [int(v) for k, v in block.items()
       if k.endswith(("_group", "_samples")) or k == "samples"] + [0]) or 8
  length = _SAMPLE_LENGTH.value or seq
  roles = _get(config, "sampling", {})
  new = _SAMPLE_NEW.value or max(
      [block.max_new_tokens for block in roles.values()] + [0]) or 1024
  side = _SIDE.value // model_config.vision.patch_size
  patches = _IMAGES.value * side * side
  sampler = sampling.Sampler(
      model_config, mesh=mesh, rules=rules, length_buckets=(length,),
      patch_buckets=(patches,), batch_buckets=(prompts,), max_cache=length + new)
  sp = sampling.SamplingParams(max_new_tokens=new, group_size=group)
  print(f"\ncompiling one generate chunk: {prompts} prompts x G={group} = "
        f"{prompts * group} rows, prompt {length} tokens ({_IMAGES.value} image(s)), "
        f"up to {new} new tokens ...", flush=True)
  plan = sampler.memory_analysis(params, sp, length=length, patches=patches)
  copy_b = parallel.per_device_bytes(plan["inference_params"])
  prefill, decode = _peak(plan["prefill"]), _peak(plan["decode"])
  peak = resident + max(prefill, decode)
  print("per device, with the train state resident:")
  print(f"  decode weights copy  {_gib(copy_b)}  (text weights in {model_config.dtype}, "
        "one array per layer; held during generate)")
  print(f"  prefill: peak        {_gib(prefill)}  (arguments {_gib(plan['prefill'].argument_size_in_bytes)}, "
        f"temporaries {_gib(plan['prefill'].temp_size_in_bytes)})")
  print(f"  decode: peak         {_gib(decode)}  (arguments {_gib(plan['decode'].argument_size_in_bytes)}, "
        f"temporaries {_gib(plan['decode'].temp_size_in_bytes)}; the cache grows to "
        f"{length + new} slots)")
  print(f"  estimated peak       {_gib(peak)}")
  return peak


if __name__ == "__main__":
  app.run(main)
