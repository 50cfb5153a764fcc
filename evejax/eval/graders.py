r"""What the rules share: a `Grade`, the papers' answer extraction, HallusionBench's metrics.

The rules themselves are each reference's own, one module per harness
(vlmevalkit_rules.py, lmms_eval_rules.py, mmzero_rules.py), combined per
benchmark in scoring.py. Here:

  Grade              what a rule (or a judge) read, the score, and whether it
                     decided (False: the reference would ask its judge, or it
                     fell back to chance).
  eve_answer         EVE's post-processing (vlmevalkit_rules.eve_post_process).
  first_answer_tag_or_boxed   EvoLMM's model: the first <answer>..</answer>,
                     else the first \boxed{..} (not balanced).
  last_flat_boxed    MM-Zero: the last \boxed{..} without nested braces.
  answers_list       a gold written as a list literal, as its elements.
  hallusion_accuracies  aAcc, fAcc (figure groups all right), qAcc (question
                     groups all right) and their mean, in percent.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import re
from typing import Iterable, Mapping

from evejax.eval import mmzero_rules
from evejax.eval import vlmevalkit_rules


@dataclasses.dataclass(frozen=True)
class Grade:
  extracted: str     # the answer the rule read (a letter, Yes/No, a number...)
  score: float       # 1.0 right, 0.0 wrong (relaxed accuracy: max over golds)
  decided: bool      # False: the rule fell back (no letter, Unknown, random pick)


# ------------------------------------------------------------ extraction
def eve_answer(reply: str, family: str = "qwen3_vl") -> str:
  """EVE's post-processing of a reply (the last box, read as its fork reads it)."""
  return vlmevalkit_rules.eve_post_process(reply, family)


def first_answer_tag_or_boxed(reply: str) -> str | None:
  r"""EvoLMM: the first <answer>...</answer>, else the first \boxed{...} (not balanced)."""
  m = re.search(r"<answer>(.*?)</answer>", reply, re.DOTALL)
  if m:
    return m.group(1).strip()
  m = re.search(r"\\boxed\{(.*?)\}", reply, re.DOTALL)
  return m.group(1).strip() if m else None


def last_flat_boxed(reply: str) -> str | None:
  r"""MM-Zero's evaluation: the last \boxed{...} without nested braces."""
  return mmzero_rules.last_flat_boxed(reply)


def answers_list(gold: str) -> list[str]:
  """A gold that is a list literal ("['1', '2']") as its elements, else [gold]."""
  text = str(gold).strip()
  if text.startswith("[") and text.endswith("]"):
    try:
      value = ast.literal_eval(text)
      if isinstance(value, (list, tuple)) and value:
        return [str(v) for v in value]
    except (ValueError, SyntaxError):
      pass
  return [text]


# --------------------------------------------------------- HallusionBench
@dataclasses.dataclass(frozen=True)
class HallusionRecord:
  subcategory: str   # l2-category (VD / VS)
  set_id: str
  figure_id: str
  question_id: str
  correct: bool


def hallusion_ids(item_id: str, extra: Mapping[str, object]) -> tuple[str, str, str] | None:
  """(set, figure, question) ids: columns when present, else index parts 3, 4, 5."""
  if all(k in extra for k in ("set_id", "figure_id", "question_id")):
    return str(extra["set_id"]), str(extra["figure_id"]), str(extra["question_id"])
  parts = str(item_id).split("_")
  return (parts[3], parts[4], parts[5]) if len(parts) >= 6 else None


def hallusion_accuracies(records: Iterable[HallusionRecord]) -> dict[str, float]:
  """aAcc, fAcc, qAcc and their mean, in percent (0 for no records)."""
  records = list(records)
  if not records:
    return {"aAcc": 0.0, "fAcc": 0.0, "qAcc": 0.0, "mean": 0.0}
  figures, questions = collections.defaultdict(list), collections.defaultdict(list)
  for r in records:
    figures[(r.subcategory, r.set_id, r.figure_id)].append(r.correct)
    questions[(r.subcategory, r.set_id, r.question_id)].append(r.correct)
  all_right = lambda groups: 100.0 * sum(all(g) for g in groups.values()) / len(groups)
  a = 100.0 * sum(r.correct for r in records) / len(records)
  f, q = all_right(figures), all_right(questions)
  return {"aAcc": a, "fAcc": f, "qAcc": q, "mean": (a + f + q) / 3.0}
