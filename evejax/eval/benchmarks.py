"""The benchmarks: where their files are, whose rules score them, what is reported.

Six benchmarks the papers report (reference/EVALUATION.md section 8):

  name        file stems (under eval.data_dir)         native harness   headline
  mathvista   MathVista_MINI, MathVista_testmini, ..   vlmevalkit       accuracy
  mmstar      MMStar                                   vlmevalkit       accuracy
  hallusion   HallusionBench                           vlmevalkit       mean of aAcc, fAcc, qAcc
  chartqa     ChartQA_TEST, ChartQA                    lmms_eval        relaxed accuracy (5%)
  ai2d        AI2D_TEST, ai2d                          lmms_eval        accuracy
  mmmu        MMMU_DEV_VAL, MMMU                       lmms_eval        micro accuracy

A benchmark is scored by the rule of its profile's harness (scoring.py),
else by its native one (the paper that reported it).

`summarise(benchmark, rows)` turns graded result rows into the summary's
numbers: the headline `score` (percent), per-category scores, the
benchmark's own metrics (HallusionBench's aAcc/fAcc/qAcc), and the rule-only
and judged scores side by side (`rule_only`, `judged`; the headline is the
judged one when a judge ran). Its denominator is every row except `no_image`
rows (VLMEvalKit drops them; MM-Zero counts the rows with an image): a row
that failed for any other reason (undecodable image, prompt too long, no
options, missing column) stays in it with score 0.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Sequence

from evejax.eval import graders

# Failure reasons that take a row out of the denominator (the benchmarks' rule).
EXCLUDED_REASONS = ("no_image",)


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  title: str
  stems: tuple[str, ...]        # file names tried under eval.data_dir (no extension)
  style: str                    # templates style: mcq | yesno | vqa | chartqa | mathvista | mmmu
  harness: str                  # whose rules score it by default (scoring.HARNESSES)
  split: str = ""               # DatasetDict / parquet split to read
  answer_index: bool = False    # an integer gold indexes the options (lmms-lab ai2d)
  needs_options: bool = False   # an item without options cannot be asked
  category_keys: tuple[str, ...] = ("category",)
  headline: str = "accuracy"
  papers: tuple[str, ...] = ()


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("mathvista", "MathVista testmini",
              ("MathVista_MINI", "MathVista_testmini", "MathVista"), "mathvista", "vlmevalkit",
              split="testmini", category_keys=("task", "category"),
              headline="accuracy",
              papers=("EVE", "EvoLMM", "MM-Zero")),
    Benchmark("mmstar", "MMStar", ("MMStar",), "mcq", "vlmevalkit", split="val",
              needs_options=True, papers=("EVE",)),
    Benchmark("hallusion", "HallusionBench", ("HallusionBench",), "yesno", "vlmevalkit",
              headline="mean of aAcc, fAcc, qAcc", papers=("EVE", "MM-Zero")),
    Benchmark("chartqa", "ChartQA test", ("ChartQA_TEST", "ChartQA"), "chartqa", "lmms_eval",
              split="test", category_keys=("type", "category"),
              headline="relaxed accuracy (5%)", papers=("EvoLMM", "MM-Zero")),
    Benchmark("ai2d", "AI2D test", ("AI2D_TEST", "ai2d", "AI2D"), "mcq", "lmms_eval",
              split="test", answer_index=True, needs_options=True, papers=("EvoLMM",)),
    Benchmark("mmmu", "MMMU val", ("MMMU_DEV_VAL", "MMMU_VAL", "MMMU"), "mmmu", "lmms_eval",
              split="validation", category_keys=("category", "subfield", "subject"),
              headline="micro accuracy", papers=("EvoLMM", "MM-Zero")),
)}


def get_benchmark(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise ValueError(f"Unknown benchmark {name!r}; valid benchmarks: {sorted(BENCHMARKS)}.")
  return BENCHMARKS[name]


def _percent(scores: Sequence[float]) -> float:
  return 100.0 * sum(scores) / len(scores) if scores else 0.0


def _scores(benchmark: Benchmark, counted: Sequence[Mapping[str, Any]], key: str
            ) -> dict[str, Any]:
  """Accuracy, per-category scores and the headline of one score column."""
  values = [float(r.get(key, r["score"])) for r in counted]
  per_category = collections.defaultdict(list)
  for r, v in zip(counted, values):
    per_category[r.get("category") or "(none)"].append(v)
  out: dict[str, Any] = {
      "accuracy": _percent(values),
      "per_category": {k: {"n": len(v), "score": _percent(v)}
                       for k, v in sorted(per_category.items())},
  }
  if benchmark.name == "hallusion":
    records = [graders.HallusionRecord(r.get("subcategory", ""), *r["group"], correct=v > 0)
               for r, v in zip(counted, values) if r.get("group")]
    metrics = graders.hallusion_accuracies(records)
    # aAcc counts every counted row, also those whose ids could not be read.
    metrics["aAcc"] = out["accuracy"]
    metrics["mean"] = (metrics["aAcc"] + metrics["fAcc"] + metrics["qAcc"]) / 3.0
    out.update(metrics)
    out["score"] = metrics["mean"]
  else:
    out["score"] = out["accuracy"]
  return out


def summarise(benchmark: Benchmark, rows: Sequence[Mapping[str, Any]], *,
              judged: bool | None = None) -> dict[str, Any]:
  """Headline score, per-category scores and counts of graded result rows.

  `rule_only` scores every row by its rule (an undecided item counts as its
  rule scored it: wrong, or a chance pick); `judged` (None when no judge ran;
  `judged=None` infers it from the rows) re-grades the items the judge saw.
  The top-level numbers are the judged ones when there are any.
  """
  counted = [r for r in rows if r.get("reason") not in EXCLUDED_REASONS]
  failures = collections.Counter(r["reason"] for r in rows if r.get("reason"))
  if judged is None:
    judged = any(r.get("judged") for r in rows)
  rule_only = _scores(benchmark, counted, "rule_score")
  with_judge = _scores(benchmark, counted, "score") if judged else None
  out: dict[str, Any] = {
      "benchmark": benchmark.name, "title": benchmark.title, "headline": benchmark.headline,
      "num_rows": len(rows), "num_counted": len(counted),
      "num_graded": sum(1 for r in counted if not r.get("reason")),
      "num_undecided": sum(1 for r in counted if not r.get("reason") and not r.get("decided", True)),
      "num_judged": sum(1 for r in counted if r.get("judged")),
      "num_judge_skipped": sum(1 for r in counted if r.get("judge_skipped")),
      "failures": dict(sorted(failures.items())),
      "denominator": ("every row except " + ", ".join(EXCLUDED_REASONS) + " rows; rows that "
                      "failed for another reason count as wrong (score 0)"),
      "rule": sorted({r["rule"] for r in counted if r.get("rule")}),
      "judges": sorted({r["judge"] for r in counted if r.get("judge")}),
      "rule_only": rule_only,
      "judged": with_judge,
  }
  out.update(with_judge or rule_only)
  out["scored_by"] = "judge" if with_judge else "rule-only"
  return out
