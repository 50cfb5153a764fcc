"""Evaluation: benchmark files -> prompts -> the training sampler -> the references' rules
(and judge) -> reports.

The package's face; the pieces live in small modules, lowest first:
  records.py     Item (one benchmark question) and Skipped (a row with a reason)
  readers.py     VLMEvalKit TSV, HF `datasets` on disk (arrow/parquet), JSONL + images
  vlmevalkit_rules.py, lmms_eval_rules.py, mmzero_rules.py
                 each harness's rules and judge prompts, ported exactly
  graders.py     Grade, the papers' answer extraction, HallusionBench's accuracies
  scoring.py     Scorer: one benchmark under one harness (rule, judge prompt, verdict)
  templates.py   prompt texts of VLMEvalKit, lmms-eval and MM-Zero
  profiles.py    eve / evolmm / mmzero: prompts, sampling, pixels, answer extraction,
                 harness, documented departures
  benchmarks.py  the six benchmarks: files, style, native harness, summary numbers
  judge.py       the judge: a local checkpoint on the same mesh, or a callable
  evaluator.py   Evaluator: prompts, one generate call, rule grading, one judge call
  runner.py      one benchmark into results.jsonl + summary, chunked, resumable
  validation.py  in-loop validation of a subset every N steps
  restore.py     one role's params from an evejax run directory (its roles.json
                 names the policy; no recipe is imported)
  cli.py         `python -m evejax.eval` (loads the model through evejax.loading)
  lmms_plugin.py `python -m lmms_eval --model evejax` (lmms-eval 0.7.3, optional)

A layer below the recipes: nothing here imports them.
"""
from evejax.eval.benchmarks import BENCHMARKS
from evejax.eval.benchmarks import get_benchmark
from evejax.eval.benchmarks import summarise
from evejax.eval.evaluator import Evaluator
from evejax.eval.profiles import PROFILES
from evejax.eval.profiles import get_profile
from evejax.eval.readers import DataError
from evejax.eval.readers import locate
from evejax.eval.readers import read
from evejax.eval.records import Item
from evejax.eval.records import Skipped
from evejax.eval.validation import Validation

__all__ = [
    "BENCHMARKS", "DataError", "Evaluator", "Item", "PROFILES", "Skipped", "Validation",
    "get_benchmark", "get_profile", "locate", "read", "summarise",
]
