r"""`python -m evejax.eval`: load a model, evaluate each configured benchmark, report.

The model comes from one of:
  --config.init.hf_dir=DIR     a local HF checkpoint directory (read onto the mesh);
  --config.init.workdir=RUN    the latest committed checkpoint of an evejax run:
                               the params of `init.role` only (restore.py), with
                               the run's config.json naming the model (its
                               `model` block and `init.hf_dir`/`tokenizer_dir`
                               win over this config's, since they describe the
                               checkpoint); `init.step` picks another step;
  neither                      a random init of `model.preset` (tiny tests).

Each benchmark of `eval.benchmarks` is read from `eval.data_dir` (nothing is
downloaded), sampled with `eval.profile` through one `Sampler` built from
`processing` (the buckets and batching training uses) on `mesh`, and written
to WORKDIR/<benchmark>/ (runner.py). WORKDIR/summary.json and summary.md hold
all of them. `eval.judge.hf_dir` adds a judge model (judge.py) on the same
mesh for what the rules leave undecided; the summaries then hold the
rule-only and the judged scores side by side.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp

from evejax import parallel
from evejax.eval import benchmarks as benchmarks_lib
from evejax.eval import evaluator as evaluator_lib
from evejax.eval import judge as judge_lib
from evejax.eval import profiles as profiles_lib
from evejax.eval import readers
from evejax.eval import report
from evejax.eval import restore
from evejax.eval import runner
from evejax.models import lora
from evejax.models import vlm
from evejax.rl import learner as learner_lib
from evejax.sampling import Sampler

from evejax import loading


def _with_run_model(config, run_dir: str):
  """This config with the run's model and init blocks (from RUN_DIR/config.json)."""
  config = copy.deepcopy(config)
  saved = restore.run_config(run_dir)
  if saved is None:
    logging.warning("%s has no config.json; the model is config.model / config.init as given.",
                    run_dir)
    return config
  with config.unlocked():
    if "seed" in saved:   # a run's random init is a function of its seed
      config.seed = saved["seed"]
    for key in ("preset", "dtype", "param_dtype"):
      if key in saved.get("model", {}):
        config.model[key] = saved["model"][key]
    for key in ("hf_dir", "tokenizer_dir"):
      if saved.get("init", {}).get(key) and not config.init[key]:
        config.init[key] = saved["init"][key]
  return config


def load(config) -> tuple[Any, dict[str, Any]]:
  """(the loaded model: model_config, tokenizer, mesh, rules, params; a description)."""
  if not config.init.workdir:
    loaded = loading.load_model(config)
    return loaded, {"hf_dir": config.init.hf_dir, "preset": config.model.preset,
                    "random_init": not config.init.hf_dir}
  run_dir = config.init.workdir
  config = _with_run_model(config, run_dir)
  model_config = loading.model_config_from(config)
  tokenizer = loading.tokenizer_from(config)
  mesh = loading.make_mesh(config)
  rules = parallel.rules_from_config(config.mesh)
  dtype = jnp.dtype(config.model.param_dtype)
  axes = vlm.param_axes(model_config)
  full = jax.eval_shape(lambda: vlm.init_params(model_config, jax.random.PRNGKey(0), dtype))
  on_mesh = lambda shapes, axes: restore.abstract_with_shardings(
      shapes, parallel.shardings_for(axes, mesh, rules, shapes_tree=shapes))
  state_dir, step = restore.latest_state_dir(run_dir, int(config.init.step))
  run_cfg = restore.run_config(run_dir) or {}
  policies = restore.saved_policies(state_dir)
  policy = restore.policy_of(config.init.role, run_dir, policies)
  lora_cfg = lora.from_config(learner_lib.merge_config(run_cfg.get("train", {})).lora)
  if lora_cfg is None:
    params = restore.restore_trained_params(state_dir, policy, on_mesh(full, axes))
  else:
    shapes = jax.eval_shape(lambda: lora.init_adapter(lora_cfg, model_config,
                                                      jax.random.key(0), dtype))
    adapter = restore.restore_trained_params(state_dir, policy,
                                             on_mesh(shapes, lora.adapter_axes(shapes, axes)))
    if "base" in policies:
      backbone = restore.restore_trained_params(state_dir, "base", on_mesh(full, axes))
    else:
      backbone = loading.load_model(config).params
    params = lora.merge(backbone, adapter, lora_cfg)
  logging.info("Restored %s params (policy %s) of step %d from %s", config.init.role, policy,
               step, run_dir)
  loaded = loading.LoadedModel(model_config, tokenizer, mesh, rules, params)
  return loaded, {"workdir": os.path.abspath(run_dir), "role": config.init.role, "step": step,
                  "policy": policy, "lora": lora_cfg is not None,
                  "preset": config.model.preset, "hf_dir": config.init.hf_dir}


def make_sampler(config, loaded, max_new_tokens: int) -> Sampler:
  p = config.processing
  return Sampler(loaded.model_config, mesh=loaded.mesh, rules=loaded.rules,
                 length_buckets=tuple(p.length_buckets), patch_buckets=tuple(p.patch_buckets),
                 batch_buckets=tuple(p.batch_buckets),
                 max_cache=max(p.length_buckets) + max_new_tokens,
                 prompt_pad_id=loaded.tokenizer.pad_id)


def run(config, workdir: str) -> list[dict[str, Any]]:
  """Evaluates every benchmark of config.eval into workdir; returns their summaries."""
  e = config.eval
  names = [e.benchmarks] if isinstance(e.benchmarks, str) else list(e.benchmarks)
  if not names:
    raise runner.EvalError("config.eval.benchmarks is empty; name at least one of "
                           f"{sorted(benchmarks_lib.BENCHMARKS)}.")
  try:
    benches = [benchmarks_lib.get_benchmark(n) for n in names]
    profile = profiles_lib.get_profile(e.profile)
  except ValueError as err:
    raise runner.EvalError(f"config.eval: {err}") from None
  if e.path and len(benches) > 1:
    raise runner.EvalError("config.eval.path names one file but eval.benchmarks has "
                           f"{len(benches)}; evaluate one benchmark, or use eval.data_dir.")
  # Every file is located before the model loads: a missing one fails in a second.
  files = [readers.locate(e.data_dir, b.stems, e.path) for b in benches]
  judge_lib.check(config)   # an unusable judge block fails before the model loads
  loaded, model_info = load(config)
  judge = judge_lib.from_config(config)
  family = profiles_lib.model_family(loaded.model_config)
  budget = max(profile.settings(family, b.name, max_new_tokens=e.max_new_tokens).max_new_tokens
               for b in benches)
  sampler = make_sampler(config, loaded, budget)
  summaries = []
  for bench, path in zip(benches, files):
    data = readers.read(path, split=e.split or bench.split, answer_index=bench.answer_index,
                        category_keys=bench.category_keys, image_dir=e.image_dir)
    logging.info("%s: %d items, %d skipped rows from %s (%s)", bench.name, len(data.items),
                 len(data.skipped), path, data.format)
    evaluator = evaluator_lib.Evaluator(
        bench, profile, model_config=loaded.model_config, tokenizer=loaded.tokenizer,
        sampler=sampler, max_new_tokens=e.max_new_tokens, min_pixels=e.min_pixels,
        max_pixels=e.max_pixels, judge=judge)
    summaries.append(runner.evaluate_benchmark(
        evaluator, loaded.params, data, os.path.join(workdir, bench.name),
        chunk_size=e.chunk_size, seed=config.seed, limit=e.limit, model=model_info,
        progress=config.log.progress))
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"profile": profile.name, "model": model_info,
               "benchmarks": {s["benchmark"]: s for s in summaries}}, f, indent=1)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(report.overview_markdown(summaries))
  print(report.overview_markdown(summaries))
  return summaries
