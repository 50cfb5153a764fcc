r"""Rule graders of the benchmarks the three papers report (pure host functions).

Each rule follows reference/EVALUATION.md (VLMEvalKit, lmms-eval, MMMU's
official parser, Pix2Struct's relaxed accuracy); the code is written here from
those rules. A grader returns a `Grade`: the answer it read, the score, and
whether the rule *decided* (a VLMEvalKit matcher that finds no letter, a
yes/no reply with neither word, an MMMU reply that needs the random fallback
are undecided: they score as the rule says, and an optional judge may
re-grade them).

  can_infer          VLMEvalKit's MCQ matcher: refusal -> Z; a lone option
                     letter token among the last 4 tokens; a lone "Z"; else
                     exactly one option text inside a reply at most twice the
                     options' total length.
  yes_no             VLMEvalKit: "yes" without "no" -> Yes, the reverse -> No.
  relaxed_match      ChartQA: numbers within 5% of a non-zero gold ("%" divides
                     by 100), else case-insensitive equality.
  leading_letter     lmms-eval ai2d: "X." at the start gives X, else the reply.
  mmmu_choice        MMMU: "(X)", then "X ", then "X."; else (over 5 words)
                     option texts in the reply; several -> the last one;
                     none -> a random letter (seeded by the item).
  mmmu_open          MMMU: key sub-responses and their numbers vs the gold.
  mathvista_rule     VLMEvalKit's rule stage: letters for multiple choice,
                     int/float equality, normalised text/list equality.
  hallusion_accuracies  aAcc, fAcc (figure groups all right), qAcc (question
                     groups all right) and their mean, in percent.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
import re
import string
from typing import Iterable, Mapping, Sequence

from evejax.rl import answers


@dataclasses.dataclass(frozen=True)
class Grade:
  extracted: str     # the answer the rule read (a letter, Yes/No, a number...)
  score: float       # 1.0 right, 0.0 wrong (relaxed accuracy: max over golds)
  decided: bool      # False: the rule fell back (no letter, Unknown, random pick)


# ------------------------------------------------------------ extraction
_TEXT_WRAP = re.compile(r"^\\text\s*\{(.*)\}$", re.DOTALL)


def last_boxed(reply: str) -> str | None:
  r"""EVE's post-processing: the last balanced \boxed{...}, a wrapping \text{} peeled."""
  boxed = answers.extract_boxed(reply)
  if boxed is None:
    return None
  m = _TEXT_WRAP.match(boxed.strip())
  return m.group(1).strip() if m else boxed


def first_answer_tag_or_boxed(reply: str) -> str | None:
  r"""EvoLMM: the first <answer>...</answer>, else the first \boxed{...} (not balanced)."""
  m = re.search(r"<answer>(.*?)</answer>", reply, re.DOTALL)
  if m:
    return m.group(1).strip()
  m = re.search(r"\\boxed\{(.*?)\}", reply, re.DOTALL)
  return m.group(1).strip() if m else None


def last_flat_boxed(reply: str) -> str | None:
  r"""MM-Zero's evaluation: the last \boxed{...} without nested braces."""
  found = re.findall(r"\\boxed\{([^}]*)\}", reply)
  return found[-1].strip() if found else None


# ------------------------------------------------------------ VLMEvalKit
# Replies that refuse to answer; VLMEvalKit maps them to the "Z" option.
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
_SPLIT_CHARS = ".()[],:;!*#{}"


def _letter_from_tokens(reply: str, letters: Sequence[str]) -> str | None:
  tokens = reply.translate({ord(c): " " for c in _SPLIT_CHARS}).split()
  found = [c for c in letters if c in tokens]
  if len(found) == 1:
    # Its first occurrence must be among the last 4 tokens: an "A" early in a
    # sentence ("A dog is ...") is an article, not an answer.
    return found[0] if tokens.index(found[0]) >= len(tokens) - 4 else None
  if not found and "Z" in tokens:
    return "Z"
  return None


def can_infer(reply: str, options: Mapping[str, str]) -> str | None:
  """VLMEvalKit's rule matcher: an option letter, "Z" (refusal/none), or None."""
  reply = str(reply)
  if any(r in reply for r in REFUSALS):
    return "Z"
  letter = _letter_from_tokens(reply, list(options))
  if letter is not None:
    return letter
  total = sum(len(str(v)) for v in options.values())
  if len(reply) > 2 * total:
    return None
  lower = reply.lower()
  hits = [k for k, v in options.items() if str(v).lower() in lower]
  return hits[0] if len(hits) == 1 else None


def grade_mcq(reply: str, options: Mapping[str, str], gold: str) -> Grade:
  letter = can_infer(reply, options)
  return Grade(letter or "", float(letter == gold), letter is not None)


_PUNCT = {ord(c): " " for c in string.punctuation}


def yes_no(reply: str) -> str:
  """VLMEvalKit: 'Yes', 'No' or 'Unknown' from the words of the reply."""
  words = str(reply).lower().translate(_PUNCT).split()
  yes, no = "yes" in words, "no" in words
  if yes and not no:
    return "Yes"
  if no and not yes:
    return "No"
  return "Unknown"


def grade_yes_no(reply: str, gold: str) -> Grade:
  said = yes_no(reply)
  return Grade(said, float(said.lower() == str(gold).strip().lower()), said != "Unknown")


# ---------------------------------------------------------------- ChartQA
def _relaxed_float(text: str) -> float | None:
  try:
    if text.endswith("%"):
      return float(text[:-1]) / 100.0
    return float(text)
  except ValueError:
    return None


def relaxed_match(pred: str, gold: str, tolerance: float = 0.05) -> bool:
  """Relaxed accuracy of one gold: |p - t| / |t| <= 5% for numbers, else equal text."""
  pred, gold = str(pred).strip(), str(gold).strip()
  p, t = _relaxed_float(pred), _relaxed_float(gold)
  if p is not None and t:
    return abs(p - t) / abs(t) <= tolerance
  return pred.lower() == gold.lower()


def grade_relaxed(pred: str, golds: Sequence[str], tolerance: float = 0.05) -> Grade:
  score = max((float(relaxed_match(pred, g, tolerance)) for g in golds), default=0.0)
  return Grade(str(pred).strip(), score, True)


# ------------------------------------------------------------------- AI2D
def leading_letter(reply: str) -> str:
  """lmms-eval ai2d: X from a reply starting "X.", else the reply itself."""
  m = re.match(r"\s*([A-Za-z])\.", reply)
  return m.group(1) if m else reply.strip()


def _bare(text: str) -> str:
  return str(text).lower().translate({ord(c): None for c in string.punctuation}).strip()


def grade_leading_letter(reply: str, gold: str) -> Grade:
  answer = leading_letter(reply)
  return Grade(answer, float(_bare(answer) == _bare(gold)), True)


# ------------------------------------------------------------------- MMMU
def _item_rng(item_id: str) -> random.Random:
  """The random fallback's generator, fixed per item (results survive resume)."""
  seed = int.from_bytes(hashlib.sha256(str(item_id).encode()).digest()[:8], "little")
  return random.Random(seed)


def mmmu_choice(reply: str, options: Mapping[str, str], item_id: str = "") -> tuple[str, bool]:
  """MMMU's multiple-choice parser: (letter, whether a rule found it)."""
  letters = list(options)
  text = str(reply).strip(",.!?;:'")
  text = f" {text} "
  bracketed = [c for c in letters if f"({c})" in text]
  candidates = bracketed or [c for c in letters if f"{c} " in text] or [
      c for c in letters if f"{c}." in text]
  by_content = False
  if not candidates and len(text.split()) > 5:
    candidates = [c for c, v in options.items() if str(v).lower() in text.lower()]
    by_content = bool(candidates)
  if not candidates:
    return _item_rng(item_id).choice(letters), False
  if len(candidates) == 1:
    return candidates[0], True
  if by_content:
    where = {c: text.lower().rfind(str(options[c]).lower()) for c in candidates}
  elif bracketed:
    where = {c: text.rfind(f"({c})") for c in candidates}
  else:
    where = {c: text.rfind(f" {c} ") for c in candidates}
  # The last one mentioned; ties (e.g. two -1s) go to the first candidate.
  best = max(where.values())
  return next(c for c in candidates if where[c] == best), True


_NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),                    # 1,234,567
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),                   # 1.5e3
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])"),  # 12, 1.5, .5
)
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def _numbers(text: str) -> list[str]:
  return [m for pattern in _NUMBER_PATTERNS for m in pattern.findall(text)]


def _is_number(text: str) -> bool:
  try:
    float(text.replace(",", ""))
    return True
  except ValueError:
    return False


def _normalise_open(text) -> list:
  """MMMU's normal form: a number rounded to 2 decimals, or lowercase text
  (a single character padded with a space on either side)."""
  text = str(text).strip()
  if _is_number(text):
    return [round(float(text.replace(",", "")), 2)]
  text = text.lower()
  return [" " + text, text + " "] if len(text) == 1 else [text]


def mmmu_open_predictions(reply: str) -> list:
  """MMMU's open-answer parser: normalised key phrases and numbers of the reply."""
  text = str(reply).strip().strip(".").lower()
  # The official sentence split (". " before a capital) runs after lowercasing,
  # so only line breaks split.
  parts = text.split("\n")
  keys = []
  for i, part in enumerate(parts):
    indicators = _KEY_INDICATORS + (("=",) if i == len(parts) - 1 else ())
    tails = [part.split(ind)[-1].strip() for ind in indicators if ind in part]
    if tails:
      shortest = min(tails, key=len)
      if shortest not in (":", ",", ".", "!", "?", ";", "'"):
        keys.append(shortest)
  keys = keys or [text]
  preds = list(keys) + [n for k in keys for n in _numbers(k)]
  out = []
  for p in preds:
    for norm in _normalise_open(p):
      if norm not in out:
        out.append(norm)
  return out


def mmmu_open_correct(predictions: Sequence, golds: Sequence[str]) -> bool:
  """Correct if a normalised gold string is inside a text prediction, or a number matches."""
  norm_golds = [n for g in golds for n in _normalise_open(g)]
  for p in predictions:
    if isinstance(p, str):
      if any(isinstance(g, str) and g in p for g in norm_golds):
        return True
    elif p in norm_golds:
      return True
  return False


def grade_mmmu(reply: str, options: Mapping[str, str], gold: str, item_id: str) -> Grade:
  if options:
    letter, found = mmmu_choice(reply, options, item_id)
    return Grade(letter, float(letter == gold), found)
  golds = answers_list(gold)
  preds = mmmu_open_predictions(reply)
  return Grade(str(preds[0]) if preds else "", float(mmmu_open_correct(preds, golds)), True)


def answers_list(gold: str) -> list[str]:
  """A gold that is a list literal ("['1', '2']") as its elements, else [gold]."""
  text = str(gold).strip()
  if text.startswith("[") and text.endswith("]"):
    import ast  # pylint: disable=g-import-not-at-top
    try:
      value = ast.literal_eval(text)
      if isinstance(value, (list, tuple)) and value:
        return [str(v) for v in value]
    except (ValueError, SyntaxError):
      pass
  return [text]


# -------------------------------------------------------------- MathVista
def _decimals(text: str) -> int:
  return len(text.split(".")[1]) if "." in text else 0


def _squash(text: str) -> str:
  return "".join(str(text).lower().split())


def mathvista_rule(reply: str, options: Mapping[str, str], gold: str, answer_type: str,
                   precision: int | None = None) -> Grade:
  """VLMEvalKit's MathVista rule stage ("rule-only": the papers had an LLM fallback).

  Multiple choice: the letter by `can_infer` (a letter or an option's text)
  equals the gold letter. int: int(float(reply)) equals int(gold). float:
  both rounded to `precision` (default: the gold's decimals) are equal.
  text/list: equal after lowercasing and removing whitespace.
  """
  reply = str(reply).strip()
  if options:
    return grade_mcq(reply, options, gold)
  if answer_type in ("int", "float"):
    try:
      value = float(reply.replace(",", ""))
      target = float(str(gold).replace(",", ""))
    except ValueError:
      return Grade(reply, 0.0, False)
    if answer_type == "int":
      return Grade(str(int(value)), float(int(value) == int(target)), True)
    digits = precision if precision is not None else _decimals(str(gold))
    return Grade(str(round(value, digits)), float(round(value, digits) == round(target, digits)), True)
  return Grade(reply, float(_squash(reply) == _squash(gold)), True)


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
