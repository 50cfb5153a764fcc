"""`Evaluator`: one benchmark, one profile, through the training sampler.

    evaluator = Evaluator(benchmark, profile, model_config=..., tokenizer=...,
                          sampler=sampler)
    prepared = evaluator.prepare(items)            # host: images, prompts, buckets
    rows = evaluator.run(params, prepared, seed)   # device: one generate call; host: grading
    summary = benchmarks.summarise(benchmark, rows)

The same object serves the command line (runner.py, chunk by chunk with
resume) and in-loop validation (validation.py, all items of a subset in one
batched `generate`). It uses the caller's `Sampler`, so evaluation shares the
training run's buckets, batching and mesh shardings, and several images per
item go through the same patch buckets.

Prompt building is host work done before sampling (the validation subset's
prompts are built once), so the device waits only for the sampling itself.
Items that cannot be asked become result rows with a reason and score 0:
`undecodable_image`, `bad_image` (an image the processor refuses, e.g.
aspect ratio over 200), `prompt_too_long` (tokens or patches over the largest
bucket: never truncated), `no_options` (a multiple-choice benchmark item
without options).

The benchmark is scored by the reference rule of the profile's harness
(scoring.py); with a judge (judge.py), the items the rule leaves undecided
(every item, under MM-Zero) are re-graded by it, in one batched judge call
per `run`.

A result row: id, prompt, reply, answer (the profile's reading of the reply),
extracted (what the rule read), gold, rule (which reference rule), rule_score,
score (the judged score where a judge re-graded the item, else rule_score),
decided (False when the rule fell back), category, subcategory, reason and
detail (failures), group (HallusionBench's set/figure/question ids); judged
items add judged, judge (which model, standing in for which reference
judge), judge_output and judge_extracted; an item whose judge prompt did not
fit the judge's buckets has judge_skipped.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import numpy as np

from evejax.eval import benchmarks as benchmarks_lib
from evejax.eval import graders
from evejax.eval import judge as judge_lib
from evejax.eval import profiles as profiles_lib
from evejax.eval import scoring
from evejax.eval.records import Item, Skipped
from evejax.processing import batching
from evejax.processing import images as images_lib
from evejax.processing import prompts
from evejax.sampling import SamplingParams

# A judge: judge.LocalJudge, judge.CallableJudge, or a plain callable
# judge(item, reply, grade) -> a score in [0, 1], or None to keep the rule's.
Judge = Callable[[Item, str, graders.Grade], "float | None"]


@dataclasses.dataclass
class Prepared:
  """An item with its prompt, ready to sample, or with the reason it cannot be."""
  item: Item
  prompt: str
  example: batching.Example | None = None
  failure: Skipped | None = None


def _open_image(ref):
  import PIL.Image  # pylint: disable=g-import-not-at-top
  if isinstance(ref, PIL.Image.Image):
    return ref
  return images_lib.load_image(ref)


def _message(error: Exception) -> str:
  """The error's text without object addresses, so results files are reproducible."""
  return re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))


def failure_row(item_id: str, reason: str, detail: str = "", *, prompt: str = "",
                gold: str = "", category: str = "", subcategory: str = "") -> dict[str, Any]:
  return {"id": item_id, "prompt": prompt, "reply": "", "answer": "", "extracted": "",
          "gold": gold, "rule_score": 0.0, "score": 0.0, "decided": True, "category": category,
          "subcategory": subcategory, "reason": reason, "detail": detail}


class Evaluator:
  """Prompts, samples and grades one benchmark's items under one profile.

  Args:
    benchmark: a `benchmarks.Benchmark` (or its name).
    profile: a `profiles.Profile` (or its name).
    model_config: the model's ModelConfig (its family picks the profile's settings).
    tokenizer: the model's tokenizer.
    sampler: an `evejax.sampling.Sampler` (its buckets bound the prompts).
    max_new_tokens, min_pixels, max_pixels: overrides of the profile's values
      (0 keeps the profile's).
    judge: optional judge (judge.LocalJudge, judge.CallableJudge or a callable)
      re-grading what the rule could not decide.
  """

  def __init__(self, benchmark, profile, *, model_config, tokenizer, sampler,
               max_new_tokens: int = 0, min_pixels: int = 0, max_pixels: int = 0,
               judge: Any = None):
    self.benchmark = (benchmarks_lib.get_benchmark(benchmark) if isinstance(benchmark, str)
                      else benchmark)
    self.profile = profiles_lib.get_profile(profile) if isinstance(profile, str) else profile
    self.model_config, self.tokenizer, self.sampler = model_config, tokenizer, sampler
    self.family = profiles_lib.model_family(model_config)
    self.settings = self.profile.settings(
        self.family, self.benchmark.name, max_new_tokens=max_new_tokens,
        min_pixels=min_pixels, max_pixels=max_pixels)
    room = sampler.max_cache - max(sampler.length_buckets)
    if self.settings.max_new_tokens > room:
      raise ValueError(
          f"eval.max_new_tokens={self.settings.max_new_tokens} (profile {self.profile.name!r}) "
          f"does not fit the sampler: max_cache {sampler.max_cache} - largest length bucket "
          f"{max(sampler.length_buckets)} leaves {room}; lower eval.max_new_tokens or raise "
          "the sampler's max_cache.")
    s = self.settings
    self.sampling = SamplingParams(
        max_new_tokens=s.max_new_tokens, greedy=s.greedy,
        temperature=s.temperature if not s.greedy else 1.0, top_k=s.top_k, top_p=s.top_p,
        group_size=1, eos_ids=tuple(tokenizer.stop_ids), pad_id=tokenizer.pad_id)
    self.scorer = scoring.scorer_for(self.benchmark.name, self.profile.harness,
                                     self.benchmark.harness)
    if judge is not None and not hasattr(judge, "describe"):
      judge = judge_lib.CallableJudge(judge, getattr(judge, "__name__", "callable"))
    self.judge = judge

  def describe(self) -> dict[str, Any]:
    """The profile with the values used, the rule and the judge: in every summary."""
    out = self.profile.describe(self.family, self.settings)
    out["rule"] = self.scorer.name
    out["judge"] = None if self.judge is None else {
        **self.judge.describe(), "stands_in_for": self.scorer.judge_label or None,
        "scope": "every item" if self.scorer.judge_all else "items the rule leaves undecided"}
    return out

  # ------------------------------------------------------------------ host
  def prepare_one(self, item: Item) -> Prepared:
    text = self.profile.prompt(item, self.benchmark.style)
    if self.benchmark.needs_options and not item.options:
      return Prepared(item, text, failure=Skipped(item.id, "no_options",
                                                  "a multiple-choice item without options"))
    try:
      images = [_open_image(ref) for ref in item.images]
    except images_lib.ImageError as e:
      return Prepared(item, text, failure=Skipped(item.id, "undecodable_image", _message(e)))
    try:
      example = prompts.user_prompt(self.model_config, self.tokenizer, text, images,
                                    min_pixels=self.settings.min_pixels,
                                    max_pixels=self.settings.max_pixels,
                                    system=self.profile.system)
    except images_lib.ImageError as e:
      return Prepared(item, text, failure=Skipped(item.id, "bad_image", _message(e)))
    too_long = (example.num_tokens > max(self.sampler.length_buckets)
                or example.num_patches > max(self.sampler.patch_buckets or (0,)))
    if too_long:
      return Prepared(item, text, failure=Skipped(
          item.id, "prompt_too_long",
          f"{example.num_tokens} tokens, {example.num_patches} patches; buckets "
          f"{max(self.sampler.length_buckets)} / {max(self.sampler.patch_buckets or (0,))} "
          "(never truncated: lower eval.max_pixels or add a bucket)"))
    return Prepared(item, text, example=example)

  def prepare(self, items: Sequence[Item]) -> list[Prepared]:
    return [self.prepare_one(it) for it in items]

  # ---------------------------------------------------------------- device
  def sample(self, params, prepared: Sequence[Prepared], seed: int) -> list[str | None]:
    """Replies of the askable items (one `generate` call), None for the others."""
    ask = [k for k, p in enumerate(prepared) if p.example is not None]
    replies: list[str | None] = [None] * len(prepared)
    if not ask:
      return replies
    out = self.sampler.generate(params, [prepared[k].example for k in ask], self.sampling,
                                seed)
    lengths = np.asarray(out.lengths)
    tokens = np.asarray(out.tokens)
    texts = self.tokenizer.decode_batch([tokens[r, :lengths[r]] for r in range(len(ask))],
                                        skip_special_tokens=True)
    for k, text in zip(ask, texts):
      replies[k] = text
    return replies

  # ----------------------------------------------------------------- grade
  def grade(self, p: Prepared, reply: str | None) -> dict[str, Any]:
    """The rule's row of one item (no judge yet)."""
    item = p.item
    if p.failure is not None or reply is None:
      failure = p.failure or Skipped(item.id, "not_sampled")
      row = failure_row(item.id, failure.reason, failure.detail, prompt=p.prompt,
                        gold=item.answer, category=item.category, subcategory=item.subcategory)
    else:
      answer = self.profile.answer(reply, self.family)
      g = self.scorer.rule(answer, item)
      row = {"id": item.id, "prompt": p.prompt, "reply": reply, "answer": answer,
             "extracted": g.extracted, "gold": item.answer, "rule": self.scorer.name,
             "rule_score": float(g.score), "score": float(g.score), "decided": bool(g.decided),
             "category": item.category, "subcategory": item.subcategory, "reason": ""}
    if self.benchmark.name == "hallusion":
      ids = graders.hallusion_ids(item.id, item.extra)
      if ids is not None:
        row["group"] = list(ids)
    return row

  def _needs_judge(self, row: dict[str, Any]) -> bool:
    if row["reason"] or self.judge is None:
      return False
    if isinstance(self.judge, judge_lib.CallableJudge):
      return not row["decided"]
    return self.scorer.needs_judge(graders.Grade(row["extracted"], row["score"], row["decided"]))

  def judge_rows(self, prepared: Sequence[Prepared], rows: list[dict[str, Any]],
                 seed: int = 0) -> None:
    """Re-grades, in place, the rows the judge is due to see (one batched judge call)."""
    due = [k for k, row in enumerate(rows) if self._needs_judge(row)]
    if not due:
      return
    if isinstance(self.judge, judge_lib.CallableJudge):
      for k in due:
        row = rows[k]
        score = self.judge.fn(prepared[k].item, row["reply"],
                              graders.Grade(row["extracted"], row["score"], row["decided"]))
        if score is not None:
          row.update(score=float(score), judged=True, judge=self.judge.name)
      return
    requests = [self.scorer.ask_judge(prepared[k].item, rows[k]["prompt"], rows[k]["answer"],
                                      rows[k]["reply"]) for k in due]
    outputs = self.judge.complete(requests, seed)
    label = self.judge.name + (f" (for {self.scorer.judge_label})" if self.scorer.judge_label
                               else "")
    for k, output in zip(due, outputs):
      if output is None:
        rows[k]["judge_skipped"] = "prompt_too_long"
        continue
      verdict = self.scorer.read_judge(prepared[k].item, output)
      rows[k].update(score=float(verdict.score), judged=True, judge=label,
                     judge_output=output, judge_extracted=verdict.extracted)

  def run(self, params, prepared: Sequence[Prepared], seed: int = 0) -> list[dict[str, Any]]:
    """Samples every askable item in one `generate` call, grades, then judges."""
    replies = self.sample(params, prepared, seed)
    rows = [self.grade(p, r) for p, r in zip(prepared, replies)]
    self.judge_rows(prepared, rows, seed)
    return rows

  def evaluate(self, params, items: Sequence[Item], seed: int = 0) -> dict[str, Any]:
    """prepare + run + summarise: the summary dict (score, per category, counts)."""
    rows = self.run(params, self.prepare(items), seed)
    return benchmarks_lib.summarise(self.benchmark, rows, judged=self.judge is not None)
