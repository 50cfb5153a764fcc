"""The benchmarks: where their files are, how an answer is scored, what is reported.

Six benchmarks the papers report, all scored by rules (reference/EVALUATION.md
section 8); none needs a judge model:

  name        file stems (under eval.data_dir)         rule                      headline
  mathvista   MathVista_MINI, MathVista_testmini, ..   VLMEvalKit rule stage     accuracy (rule-only)
  mmstar      MMStar                                   can_infer letter          accuracy
  hallusion   HallusionBench                           yes/no words              mean of aAcc, fAcc, qAcc
  chartqa     ChartQA_TEST, ChartQA                    relaxed accuracy (5%)     accuracy
  ai2d        AI2D_TEST, ai2d                          leading "X." letter       accuracy
  mmmu        MMMU_DEV_VAL, MMMU                       MMMU parser (seeded)      micro accuracy

`summarise(benchmark, rows)` turns graded result rows into the summary's
numbers: the headline `score` (percent), per-category scores, and the
benchmark's own metrics (HallusionBench's aAcc/fAcc/qAcc). Its denominator is
every row except `no_image` rows (VLMEvalKit drops them; MM-Zero counts the
rows with an image): a row that failed for any other reason (undecodable
image, prompt too long, no options, missing column) stays in it with score 0.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Mapping, Sequence

from evejax.eval import graders
from evejax.eval.records import Item

# Failure reasons that take a row out of the denominator (the benchmarks' rule).
EXCLUDED_REASONS = ("no_image",)


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  title: str
  stems: tuple[str, ...]        # file names tried under eval.data_dir (no extension)
  style: str                    # templates style: mcq | yesno | vqa | chartqa | mathvista | mmmu
  grade: Callable[[str, Item], graders.Grade]
  split: str = ""               # DatasetDict / parquet split to read
  answer_index: bool = False    # an integer gold indexes the options (lmms-lab ai2d)
  needs_options: bool = False   # an item without options cannot be asked
  category_keys: tuple[str, ...] = ("category",)
  headline: str = "accuracy"
  papers: tuple[str, ...] = ()


def _mcq(extracted: str, item: Item) -> graders.Grade:
  return graders.grade_mcq(extracted, item.options, item.answer)


def _yes_no(extracted: str, item: Item) -> graders.Grade:
  return graders.grade_yes_no(extracted, item.answer)


def _relaxed(extracted: str, item: Item) -> graders.Grade:
  return graders.grade_relaxed(extracted, graders.answers_list(item.answer))


def _leading_letter(extracted: str, item: Item) -> graders.Grade:
  return graders.grade_leading_letter(extracted, item.answer)


def _mmmu(extracted: str, item: Item) -> graders.Grade:
  return graders.grade_mmmu(extracted, item.options, item.answer, item.id)


def _mathvista(extracted: str, item: Item) -> graders.Grade:
  return graders.mathvista_rule(extracted, item.options, item.answer,
                                item.answer_type or "text", item.precision)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("mathvista", "MathVista testmini (rule-only)",
              ("MathVista_MINI", "MathVista_testmini", "MathVista"), "mathvista", _mathvista,
              split="testmini", category_keys=("task", "category"),
              headline="accuracy (rule-only; the papers had an LLM fallback)",
              papers=("EVE", "EvoLMM", "MM-Zero")),
    Benchmark("mmstar", "MMStar", ("MMStar",), "mcq", _mcq, split="val",
              needs_options=True, papers=("EVE",)),
    Benchmark("hallusion", "HallusionBench", ("HallusionBench",), "yesno", _yes_no,
              headline="mean of aAcc, fAcc, qAcc", papers=("EVE", "MM-Zero")),
    Benchmark("chartqa", "ChartQA test", ("ChartQA_TEST", "ChartQA"), "chartqa", _relaxed,
              split="test", category_keys=("type", "category"),
              headline="relaxed accuracy (5%)", papers=("EvoLMM", "MM-Zero")),
    Benchmark("ai2d", "AI2D test", ("AI2D_TEST", "ai2d", "AI2D"), "mcq", _leading_letter,
              split="test", answer_index=True, needs_options=True, papers=("EvoLMM",)),
    Benchmark("mmmu", "MMMU val", ("MMMU_DEV_VAL", "MMMU_VAL", "MMMU"), "mmmu", _mmmu,
              split="validation", category_keys=("category", "subfield", "subject"),
              headline="micro accuracy", papers=("EvoLMM", "MM-Zero")),
)}


def get_benchmark(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise ValueError(f"Unknown benchmark {name!r}; valid benchmarks: {sorted(BENCHMARKS)}.")
  return BENCHMARKS[name]


def _percent(scores: Sequence[float]) -> float:
  return 100.0 * sum(scores) / len(scores) if scores else 0.0


def summarise(benchmark: Benchmark, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Headline score, per-category scores and counts of graded result rows."""
  counted = [r for r in rows if r.get("reason") not in EXCLUDED_REASONS]
  failures = collections.Counter(r["reason"] for r in rows if r.get("reason"))
  per_category = collections.defaultdict(list)
  for r in counted:
    per_category[r.get("category") or "(none)"].append(float(r["score"]))
  out: dict[str, Any] = {
      "benchmark": benchmark.name, "title": benchmark.title, "headline": benchmark.headline,
      "num_rows": len(rows), "num_counted": len(counted),
      "num_graded": sum(1 for r in counted if not r.get("reason")),
      "num_undecided": sum(1 for r in counted if not r.get("reason") and not r.get("decided", True)),
      "num_judged": sum(1 for r in counted if r.get("judged")),
      "failures": dict(sorted(failures.items())),
      "denominator": ("every row except " + ", ".join(EXCLUDED_REASONS) + " rows; rows that "
                      "failed for another reason count as wrong (score 0)"),
      "accuracy": _percent([float(r["score"]) for r in counted]),
      "per_category": {k: {"n": len(v), "score": _percent(v)}
                       for k, v in sorted(per_category.items())},
  }
  if benchmark.name == "hallusion":
    records = []
    for r in counted:
      ids = r.get("group")
      if ids:
        records.append(graders.HallusionRecord(r.get("subcategory", ""), *ids,
                                               correct=float(r["score"]) > 0))
    metrics = graders.hallusion_accuracies(records)
    # aAcc counts every counted row, also those whose ids could not be read.
    metrics["aAcc"] = out["accuracy"]
    metrics["mean"] = (metrics["aAcc"] + metrics["fAcc"] + metrics["qAcc"]) / 3.0
    out.update(metrics)
    out["score"] = metrics["mean"]
  else:
    out["score"] = out["accuracy"]
  return out
