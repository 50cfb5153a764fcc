"""In-loop validation: a benchmark subset scored every few training steps.

A recipe config names the subset and the interval (EVE monitored 200 MMStar
items every 5 steps):

    c.validation = validation.config_block(benchmark="mmstar", num_items=200, every=5,
                                           data_dir="/data/LMUData", max_new_tokens=1024)

and the recipe runner builds one `Validation` on the
run's sampler and scores `validation.role` after every train step it is due:

    val = validation.Validation(c.validation, model_config, tokenizer, sampler)
    ...
    val.maybe_evaluate(step, solver.params, writer)   # -> metrics dict or None

The file is read and every prompt built (images decoded, patchified, placed
in buckets) once, at construction, so a validation step costs the device one
batched `generate` call over the subset and nothing else; grading is host
regex work of milliseconds. Scores go to the metrics writer (TensorBoard and
metrics.jsonl) as `val/<benchmark>/<metric>`.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from evejax.eval import benchmarks as benchmarks_lib
from evejax.eval import evaluator as evaluator_lib
from evejax.eval import profiles
from evejax.eval import readers
from evejax.eval import runner


def config_block(*, benchmark: str = "", num_items: int = 200, every: int = 5,
                 profile: str = "eve", data_dir: str = "", path: str = "",
                 max_new_tokens: int = 0, role: str = "solver") -> ml_collections.ConfigDict:
  """The `validation` block of a recipe config; benchmark "" turns validation off."""
  return ml_collections.ConfigDict(dict(
      benchmark=benchmark,        # a name of evejax.eval.benchmarks.BENCHMARKS; "" = off
      role=role,                  # the recipe role whose policy is scored
      profile=profile,            # evejax.eval.profiles.PROFILES
      data_dir=data_dir, path=path, split="", image_dir="",
      num_items=num_items,        # subset size (a seeded sample, in file order); 0 = all
      every=every,                # train steps between validations
      max_new_tokens=max_new_tokens, min_pixels=0, max_pixels=0,  # 0 = the profile's
      seed=0,
  ))


def enabled(block) -> bool:
  return bool(block and block.get("benchmark"))


def new_tokens(block, model_config) -> int:
  """The most new tokens validation under `block` samples (0 when it is off)."""
  if not enabled(block):
    return 0
  profile = profiles.get_profile(block.profile)
  return profile.settings(profiles.model_family(model_config), block.benchmark,
                          max_new_tokens=block.max_new_tokens).max_new_tokens


def from_config(block, model_config, tokenizer, sampler) -> "Validation | None":
  """The run's in-loop validation, or None when `block` turns it off."""
  if not enabled(block):
    return None
  return Validation(block, model_config, tokenizer, sampler)


def subset(items: list, n: int, seed: int) -> list:
  """n items drawn without replacement (seeded), kept in file order."""
  if not n or n >= len(items):
    return list(items)
  keep = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
  return [items[i] for i in keep]


class Validation:
  """A fixed benchmark subset with its prompts built, scored on demand."""

  def __init__(self, block, model_config, tokenizer, sampler, *, judge=None):
    self.block = block
    bench = benchmarks_lib.get_benchmark(block.benchmark)
    path = readers.locate(block.data_dir, bench.stems, block.path)
    data = readers.read(path, split=block.split or bench.split, answer_index=bench.answer_index,
                        category_keys=bench.category_keys, image_dir=block.image_dir)
    self.items = subset(runner.unique_ids(data.items), int(block.num_items), int(block.seed))
    self.evaluator = evaluator_lib.Evaluator(
        bench, block.profile, model_config=model_config, tokenizer=tokenizer, sampler=sampler,
        max_new_tokens=block.max_new_tokens, min_pixels=block.min_pixels,
        max_pixels=block.max_pixels, judge=judge)
    self.prepared = self.evaluator.prepare(self.items)
    self.name = bench.name

  def due(self, step: int) -> bool:
    every = int(self.block.every)
    return every > 0 and step % every == 0

  def evaluate(self, params) -> dict[str, Any]:
    """Scores the subset: {score, accuracy, failed, undecided[, aAcc, fAcc, qAcc, mean]}."""
    rows = self.evaluator.run(params, self.prepared, int(self.block.seed))
    s = benchmarks_lib.summarise(self.evaluator.benchmark, rows)
    metrics = {"score": s["score"], "accuracy": s["accuracy"],
               "failed": sum(s["failures"].values()), "undecided": s["num_undecided"]}
    metrics.update({k: s[k] for k in ("aAcc", "fAcc", "qAcc", "mean") if k in s})
    return metrics

  def maybe_evaluate(self, step: int, params, writer=None) -> dict[str, Any] | None:
    """Evaluates when `step` is due; writes `val/<benchmark>/*` scalars to `writer`."""
    if not self.due(step):
      return None
    metrics = self.evaluate(params)
    if writer is not None:
      writer.scalars(step, metrics, prefix=f"val/{self.name}")
    return metrics
