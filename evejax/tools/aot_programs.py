"""Every program a run of a config executes, as things to compile ahead of time.

`programs(config, mesh, largest=...)` lists them (nothing is compiled yet):

  train/<policy>/<kind>   each policy's train step for each kind of stage the
                          schedule has (a warm start's SFT, the RL algorithm of
                          `config.train`), at the rows that recipe's step
                          trains on, the largest length bucket and the largest
                          patch bucket that fits it
  score/<policy>/reference  the reference pass (GRPO with a KL term), same batch
  prefill/..., decode/... one `Sampler.generate` chunk per sampling call the
                          recipe makes (role, G, greedy) and bucket
                          combination (batch x length x patches that fit;
                          `largest`: only the largest of each call); with
                          `decoding.mode="slots"` also decode/.../init and
                          decode/.../insert, a slot run's other programs
  vision/<policy>         the vision tower alone on a chunk at the largest patch bucket
  eval: prefill/decode    the evaluator's chunks (configs/eval.py, or a
                          recipe's in-loop validation when it is on)

Each `Program` carries what memory stays resident beside it (the train state
of every policy, as `plan_memory` counts it) and, for train steps, the model
FLOPs `bench_train` counts for the same shape.

What a recipe does with its roles (rows per step, G per sampling call) is read
from its config by the tables below (`_STEP_ROWS`, `_SAMPLING_CALLS`): the
recipe classes do not say it. A `Recipe.programs(config)` hook returning these
would make them exact for a user's recipe too; until then an unknown recipe
gets one row per device per micro-batch and each role sampled at its group
sizes found in the config's recipe block.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from evejax import loading
from evejax import parallel
from evejax.models import lora as lora_lib
from evejax.models import vlm
from evejax.rl import learner as learner_lib
from evejax.rl import synthetic
from evejax.tools import flops as flops_lib


@dataclasses.dataclass
class Program:
  """One program to compile: how to build it and what is resident beside it."""
  name: str
  kind: str                    # train | score | prefill | decode | vision
  role: str
  shape: str                   # rows x tokens (x patches), G, new tokens: for people
  compile: Callable[[], Any]   # -> jax.stages.Compiled (or a dict of them: a chunk)
  resident: int                # bytes per device held beside the program (not its arguments)
  model_flops: float = 0.0     # bench_train's model FLOPs per device (train steps)
  part: str = ""               # for a chunk: "prefill" | "decode"


def _get(config, path: str, default=None):
  node = config
  for part in path.split("."):
    if node is None or not hasattr(node, "keys") or part not in node:
      return default
    node = node[part]
  return node


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


# Rows of one train step, by recipe, stage kind and role: what the recipe's
# `<kind>_step` passes to Role.update / Role.sft.
def _eve_rows(c, kind, role):
  e, w = c.eve, c.warmstart
  if kind == "warmstart":
    return w.batch_size if role == "challenger" else (w.solver_batch_size or w.batch_size)
  return {"challenger": e.challenger_prompts * e.challenger_group,
          "solver": e.solver_prompts * e.solver_group}[role]


def _mmzero_rows(c, kind, role):
  m = c.mmzero
  if kind == "warmstart":
    return c.warmstart.batch_size
  return {"proposer": m.proposer_prompts * m.proposer_group,
          "coder": m.coder_prompts * m.coder_group,
          "solver": m.solver_prompts * m.solver_group}[role]


def _evolmm_rows(c, kind, role):
  e = c.evolmm
  if kind == "warmstart":
    return c.warmstart.batch_size
  if role == "proposer":
    return e.images_per_step * e.proposer_group
  # The published update steps on one answer at a time; grpo on all of them.
  return 1 if e.update_rule == "sequential" else e.images_per_step * e.proposer_group * e.samples


_STEP_ROWS = {"eve": _eve_rows, "mmzero": _mmzero_rows, "evolmm": _evolmm_rows}
# Stages that train more than their own role (EvoLMM's step updates both adapters).
_EXTRA_ROLES = {("evolmm", "evolve"): ("proposer",)}


# (role, G, greedy) of every Role.generate call a recipe makes.
def _eve_calls(c):
  e = c.eve
  return [("challenger", e.challenger_group, False), ("solver", e.solver_group, False),
          ("solver", e.difficulty_samples, False), ("solver", 1, True)]


def _mmzero_calls(c):
  m = c.mmzero
  return [("proposer", m.proposer_group, False), ("coder", m.coder_samples, False),
          ("coder", m.coder_group, False), ("coder", m.heldout_coder_samples, False),
          ("solver", m.solver_samples, False), ("solver", m.solver_select_samples, False),
          ("solver", m.solver_group, False), ("solver", 1, True)]


def _evolmm_calls(c):
  e = c.evolmm
  return [("proposer", e.proposer_group, False), ("solver", e.samples, False),
          ("solver", 1, True)]


_SAMPLING_CALLS = {"eve": _eve_calls, "mmzero": _mmzero_calls, "evolmm": _evolmm_calls}


def _generic_calls(c, roles):
  block = _get(c, c.recipe, {}) or {}
  groups = sorted({int(v) for k, v in block.items()
                   if k.endswith(("_group", "_samples")) or k == "samples"}) or [8]
  return [(r, g, False) for r in roles for g in groups] + [(r, 1, True) for r in roles]


def _recipe_name(config) -> str:
  return str(config.recipe).rpartition(".")[2]


def patches_fitting(model_config, length: int, patch_buckets) -> list[int]:
  """Patch buckets whose image tokens (and their two markers) fit a prompt of `length`."""
  unit = model_config.vision.merge_unit
  return [p for p in patch_buckets if p // unit + 2 <= length] or [min(patch_buckets)]


def abstract_batch(model_config, rows: int, length: int, patches: int
                   ) -> learner_lib.TrainBatch:
  """ShapeDtypeStructs of the batch `Role.update` builds: `rows` x `length` tokens,
  `patches` patch rows each, the sampler's log-probs as old_logp; the learner adds
  the fields its algorithm reads."""
  full = synthetic.abstract_batch(model_config, rows, length, patches=patches)
  return learner_lib.TrainBatch(inputs=full.inputs, targets=full.targets,
                                loss_mask=full.loss_mask, old_logp=full.loss_mask)


def _model_flops(model_config, rows, length, patches, passes: int, devices: int) -> float:
  """bench_train's matmul FLOPs of `passes` forward-equivalents, per device."""
  side_patches = math.isqrt(patches)
  images = 1 if patches and side_patches * side_patches == patches else 0
  side = side_patches * model_config.vision.patch_size
  fwd = flops_lib.forward_flops(model_config, rows, length, images, side)
  return passes * fwd / devices


def _state_bytes(learner) -> int:
  own_ref = parallel.per_device_bytes(learner.reference_params) if learner.owns_reference else 0
  return parallel.per_device_bytes(learner.abstract_state()) + own_ref


def _policies(config, mesh, recipe_cls, name: str) -> dict[str, Any]:
  """Every policy of the run (abstract learners), warm-start-only ones included."""
  from evejax.recipes import runner  # pylint: disable=g-import-not-at-top
  policies = runner.abstract_policies(recipe_cls, config, mesh)
  if name == "evolmm" and config.warmstart.enabled:
    # EvoLMM's warm start trains the backbone in full (no adapter, no reference):
    # a policy of its own that stays resident through the run.
    cfg = ml_collections.ConfigDict({k: v for k, v in config.train.items() if k != "reinforce"})
    cfg.lora.rank, cfg.algorithm, cfg.loss.kl_coef = 0, "grpo", 0.0
    first = next(iter(policies.values()))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), first.backbone)
    policies["base"] = learner_lib.Learner(
        first.model_config, cfg, shapes, param_dtype=config.model.param_dtype, mesh=mesh,
        rules=parallel.rules_from_config(config.mesh), keep_reference=False)
  return policies


def resident_bytes(policies: dict[str, Any]) -> dict[str, int]:
  """Per device: every policy's train state (+ own reference), and one LoRA backbone."""
  out = {n: _state_bytes(l) for n, l in policies.items()}
  backbone = next((l.backbone for l in policies.values() if l.backbone is not None), None)
  if backbone is not None and "base" not in policies:
    out["backbone"] = parallel.per_device_bytes(backbone)
  return out


def _completion_window(config, learner, role: str, length: int) -> int:
  """The window a step of `role` scores (`Learner.step` measures it from the
  batch): the role's longest completion at the end of a `length`-token row."""
  new = int(_get(config, f"sampling.{role}.max_new_tokens", 0) or 0)
  if not learner.cfg.completion_window or not 0 < new < length:
    return 0
  mask = np.zeros((1, length), np.int32)
  mask[0, -new:] = 1
  return learner_lib.window_size(mask)


def _train_programs(config, mesh, recipe_cls, policies, roles, resident_total, length,
                    patches) -> list[Program]:
  name = _recipe_name(config)
  rows_of = _STEP_ROWS.get(name)
  wanted = []
  for st in recipe_cls.stages(config):
    if not st.trains:
      continue
    kind = "sft" if st.kind == "warmstart" else None
    for role in (st.role,) + _EXTRA_ROLES.get((name, st.kind), ()):
      if (role, st.kind) not in [(r, k) for r, k, _ in wanted]:
        wanted.append((role, st.kind, kind))
  out = []
  devices = mesh.devices.size
  for role, stage_kind, kind in wanted:
    policy = roles.get(role, role)
    learner = policies[policy]
    step_kind = kind or learner.algorithm.name
    rows = rows_of(config, stage_kind, role) if rows_of else learner.row_multiple
    rows = _round_up(int(rows), learner.row_multiple)
    batch = abstract_batch(learner.model_config, rows, length, patches)
    temperature = float(_get(config, f"sampling.{role}.temperature", 1.0)) or 1.0
    others = resident_total - _state_bytes(learner) - (
        parallel.per_device_bytes(learner.backbone) if learner.backbone is not None
        and "base" not in policies else 0)
    alg = learner._algorithm(step_kind)  # pylint: disable=protected-access
    if alg.reference == "logprobs" and learner.owns_reference:
      # The reference is resident but not an argument of the step.
      others += parallel.per_device_bytes(learner.reference_params)
    # A forward and the backward's activation gradients; weight gradients
    # only where the backbone trains (a LoRA step's adapters are negligible).
    passes = (2 if learner.lora is not None else 3) + (1 if alg.reference == "params" else 0)
    window = _completion_window(config, learner, role, length)
    shape = (f"{rows} x {length} tokens, {patches} patches, "
             f"{learner.cfg.micro_batches} micro-batch(es)"
             + (f", scoring a {window}-token window" if window else ""))
    out.append(Program(
        f"train/{policy}/{step_kind}", "train", role, shape,
        lambda l=learner, k=step_kind, b=batch, t=temperature, w=window: l.lower_step(
            k, b, temperature=t, window=w).compile(),
        others, _model_flops(learner.model_config, rows, length, patches, passes, devices)))
    if alg.reference == "logprobs" and learner.reference_params is not None and \
        not any(p.name == f"score/{policy}/reference" for p in out):
      ref_b = (parallel.per_device_bytes(learner.reference_params) if learner.owns_reference
               else parallel.per_device_bytes(learner.backbone))
      out.append(Program(
          f"score/{policy}/reference", "score", role, shape,
          lambda l=learner, b=batch: l.lower_score(b).compile(),
          resident_total - ref_b,
          _model_flops(learner.model_config, rows, length, patches, 1, devices)))
  return out


def _sampling_params(block, group: int, greedy: bool, stop_ids, pad_id):
  from evejax.sampling import SamplingParams  # pylint: disable=g-import-not-at-top
  return SamplingParams(
      max_new_tokens=int(block["max_new_tokens"]), greedy=greedy,
      temperature=float(block.get("temperature", 1.0)) if not greedy else 1.0,
      top_k=int(block.get("top_k", 0)), top_p=float(block.get("top_p", 1.0)),
      group_size=group, eos_ids=tuple(stop_ids), pad_id=pad_id)


def _chunk_programs(sampler, params, label: str, role: str, sp, buckets,
                    resident) -> list[Program]:
  """The programs of one sampling call for each (batch, length, patches) bucket:
  a static chunk's prefill + decode, or with slot decoding a generate call's
  four (`continuous.compile_slots`: its slots = the batch bucket x G, its ring
  the length bucket + max_new_tokens, a refill of every slot at once)."""
  from evejax.sampling import continuous  # pylint: disable=g-import-not-at-top
  slots = sampler.decode_mode == "slots"
  build = functools.partial(continuous.compile_slots, sampler) if slots else sampler.compile_chunk
  out = []
  for b, length, p in buckets:
    shape = (f"{b} prompts x G={sp.group_size}" + (f" = {b * sp.group_size} slots" if slots
                                                   else "")
             + f", prompt {length} tokens, {p} patches, {sp.max_new_tokens} new tokens"
             + (" (greedy)" if sp.greedy else ""))
    holder: dict[str, Any] = {}

    def chunk(b=b, length=length, p=p, holder=holder):
      if not holder:
        holder.update(build(params, sp, length=length, patches=p, prompts=b))
      return holder

    tag = f"{label}/b{b}xL{length}xP{p}/G{sp.group_size}/N{sp.max_new_tokens}"
    if sp.greedy:
      tag += "/greedy"
    out.append(Program(f"prefill/{tag}", "prefill", role, shape, chunk, resident,
                       part="prefill"))
    out.append(Program(f"decode/{tag}", "decode", role, shape, chunk, resident, part="decode"))
    if slots:   # decode/<tag>/...: `--only decode/<role>` keeps them with their loop
      out += [Program(f"decode/{tag}/{part}", "decode", role, shape, chunk, resident,
                      part=part) for part in ("init", "insert")]
  return out


def _buckets(model_config, processing, largest: bool) -> list[tuple[int, int, int]]:
  batches = sorted(processing.batch_buckets)
  lengths = sorted(processing.length_buckets)
  patch_buckets = sorted(processing.patch_buckets)
  combos = [(b, t, p) for b in batches for t in lengths
            for p in patches_fitting(model_config, t, patch_buckets)]
  if largest:
    t = lengths[-1]
    combos = [(batches[-1], t, max(patches_fitting(model_config, t, patch_buckets)))]
  return combos


def programs(config, mesh, *, largest: bool = False) -> tuple[list[Program], dict[str, int]]:
  """(the programs of a run of `config` on `mesh`, resident bytes per device by policy)."""
  if "eval" in config and "recipe" not in config:
    return _eval_programs(config, mesh, largest)
  from evejax import recipes  # pylint: disable=g-import-not-at-top
  from evejax.sampling import Sampler  # pylint: disable=g-import-not-at-top
  from evejax.eval import validation  # pylint: disable=g-import-not-at-top
  from evejax.recipes import runner  # pylint: disable=g-import-not-at-top
  recipe_cls = recipes.resolve(config.recipe)
  name = _recipe_name(config)
  policies = _policies(config, mesh, recipe_cls, name)
  roles = {s.name: s.share_policy_with or s.name for s in recipe_cls.role_specs(config)}
  # A shared policy is its first role's: follow chains (EVE share_params).
  for r in roles:
    while roles[r] in roles and roles[roles[r]] != roles[r]:
      roles[r] = roles[roles[r]]
  resident = resident_bytes(policies)
  total = sum(resident.values())
  model_config = next(iter(policies.values())).model_config
  p = config.processing
  length = max(p.length_buckets)
  patches = max(patches_fitting(model_config, length, p.patch_buckets))
  out = _train_programs(config, mesh, recipe_cls, policies, roles, total, length, patches)

  tokenizer = loading.tokenizer_from(config)
  blocks = list(config.sampling.values())
  val_new = validation.new_tokens(config.get("validation"), model_config)
  cfg = lora_lib.from_config(learner_lib.merge_config(config.train).lora)
  sampler = Sampler(
      model_config, mesh=mesh, rules=parallel.rules_from_config(config.mesh),
      length_buckets=tuple(p.length_buckets), patch_buckets=tuple(p.patch_buckets),
      batch_buckets=tuple(p.batch_buckets),
      max_cache=max(p.length_buckets) + max([int(b.max_new_tokens) for b in blocks] + [val_new]),
      prompt_pad_id=tokenizer.pad_id, model=None if cfg is None else lora_lib.AdaptedModel(cfg),
      **runner.decoding_kwargs(config))
  calls = (_SAMPLING_CALLS[name](config) if name in _SAMPLING_CALLS
           else _generic_calls(config, list(roles)))
  if validation.enabled(config.get("validation")):
    calls.append((config.validation.role, 1, True))
  seen = set()
  combos = _buckets(model_config, p, largest)
  for role, group, greedy in calls:
    block = dict(config.sampling[role])
    if greedy and validation.enabled(config.get("validation")) and role == config.validation.role:
      block["max_new_tokens"] = max(int(block["max_new_tokens"]), val_new)
    sp = _sampling_params(block, int(group), greedy, tokenizer.stop_ids, tokenizer.pad_id)
    policy = roles[role]
    key = (policy, sp)
    if key in seen:
      continue
    seen.add(key)
    params = policies[policy].sampler_weights
    out += _chunk_programs(sampler, params, f"{role}", role, sp, combos, total)
  first = next(iter(policies))
  weights = (policies[first].backbone if policies[first].backbone is not None
             else policies[first].params)
  out.append(_vision_program(model_config, mesh, weights, max(p.batch_buckets),
                             max(p.patch_buckets), total, first))
  return out, resident


def _vision_program(model_config, mesh, params, rows: int, patches: int, resident: int,
                    role: str) -> Program:
  """The vision tower alone on one chunk's images at the largest patch bucket."""
  vision = params["vision"]
  s = jax.ShapeDtypeStruct
  i32 = jnp.int32
  shard = lambda x: parallel.abstract_tree(x, parallel.batch_sharding(mesh, x.ndim))
  inputs = (shard(s((rows, patches, model_config.vision.patch_dim), jnp.float32)),
            shard(s((rows, patches, 2), i32)), shard(s((rows, patches), i32)),
            shard(s((rows, patches), i32)))

  def tower(vision, patches_, coords, image, window):
    module = vlm.module(model_config)
    return module.apply({"params": {"vision": vision}}, patches_, coords, image, window,
                        method=lambda m, *xs: m.vision(*xs))

  def build():
    return parallel.OnMesh(jax.jit(tower), mesh).lower(vision, *inputs).compile()

  side = math.isqrt(patches)
  flops = 0.0
  if side * side == patches:
    full = flops_lib.forward_flops(model_config, rows, 1, 1, side * model_config.vision.patch_size)
    text = flops_lib.forward_flops(model_config, rows, 1, 0, 0)
    flops = (full - text) / mesh.devices.size
  return Program(f"vision/{role}/b{rows}xP{patches}", "vision", role,
                 f"{rows} prompts x {patches} patches", build, resident, flops)


def _eval_programs(config, mesh, largest: bool) -> tuple[list[Program], dict[str, int]]:
  """The evaluator's chunks (`python -m evejax.eval`), on params loaded as it loads them."""
  from evejax.eval import benchmarks as benchmarks_lib  # pylint: disable=g-import-not-at-top
  from evejax.eval import profiles as profiles_lib  # pylint: disable=g-import-not-at-top
  from evejax.sampling import Sampler  # pylint: disable=g-import-not-at-top
  model_config = loading.model_config_from(config)
  tokenizer = loading.tokenizer_from(config)
  rules = parallel.rules_from_config(config.mesh)
  dtype = jnp.dtype(config.model.param_dtype)
  shapes = jax.eval_shape(lambda: vlm.init_params(model_config, jax.random.PRNGKey(0), dtype))
  params = parallel.abstract_tree(shapes, parallel.shardings_for(
      vlm.param_axes(model_config), mesh, rules, shapes_tree=shapes))
  resident = {"params": parallel.per_device_bytes(params)}
  e = config.eval
  names = [e.benchmarks] if isinstance(e.benchmarks, str) else list(e.benchmarks)
  profile = profiles_lib.get_profile(e.profile)
  family = profiles_lib.model_family(model_config)
  settings = {n: profile.settings(family, benchmarks_lib.get_benchmark(n).name,
                                  max_new_tokens=e.max_new_tokens) for n in names}
  budget = max(s.max_new_tokens for s in settings.values())
  p = config.processing
  sampler = Sampler(model_config, mesh=mesh, rules=rules,
                    length_buckets=tuple(p.length_buckets), patch_buckets=tuple(p.patch_buckets),
                    batch_buckets=tuple(p.batch_buckets), max_cache=max(p.length_buckets) + budget,
                    prompt_pad_id=tokenizer.pad_id)
  out, seen = [], set()
  combos = _buckets(model_config, p, largest)
  for n, s in settings.items():
    block = {"max_new_tokens": s.max_new_tokens, "temperature": s.temperature,
             "top_k": s.top_k, "top_p": s.top_p}
    sp = _sampling_params(block, 1, s.greedy, tokenizer.stop_ids, tokenizer.pad_id)
    if sp in seen:
      continue
    seen.add(sp)
    out += _chunk_programs(sampler, params, f"eval/{n}", "eval", sp, combos,
                           resident["params"])
  out.append(_vision_program(model_config, mesh, params, max(p.batch_buckets),
                             max(p.patch_buckets), resident["params"], "eval"))
  return out, resident
