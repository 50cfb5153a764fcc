r"""lmms-eval's rules (0.7.3, the tasks EvoLMM ran) and its MathVista judge prompt.

Ported from a reading of lmms-eval 0.7.3's `tasks/ai2d/utils.py` with the
`exact_match` metric (`api/metrics.py`), `tasks/chartqa/utils.py`,
`tasks/mmmu/utils.py` (MMMU's own `eval_utils.py`, which it cites) and
`tasks/mathvista/mathvista_evals.py`. lmms-eval strips every reply before a
task's `process_results`; the ai2d filter runs before that strip.

  ai2d       "X." at the start (X a capital letter) gives X, else the reply;
             then strip, lowercase, delete punctuation (no strip after it) and
             compare with the gold letter.
  chartqa    relaxed accuracy against the one gold.
  mmmu       the MMMU parser: sentence punctuation stripped one character
             kind at a time; "(X)", then "X ", then "X."; option texts in a
             reply of over 5 words; ties to the last mention; else a random
             letter. Open answers: key sub-responses after indicator words
             (an empty tail is skipped), numbers on word boundaries (`12cm`
             and `12th` give none), compared after MMMU's normalisation. The
             gold is one string (a list literal is not split).
  mathvista  the rule stage of `extract_answer` (a reply equal to a choice
             text, or one `int()` / `float()` accept); anything else goes to
             the judge, whose extraction is normalised (a "(X)" letter or a
             letter to its choice, else the nearest choice by edit distance;
             int(float(x)); round(x, precision)) and compared as strings.
"""
from __future__ import annotations

import random
import re
import string
from typing import Mapping, Sequence

# --------------------------------------------------------------------- ai2d
_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def ai2d_filter(reply: str) -> str:
  """The task's MultiChoiceRegexFilter: X of a leading "X.", else the reply."""
  m = _LEADING_LETTER.match(reply)
  return m.group(1) if m else reply


def exact_match(prediction: str, reference: str) -> bool:
  """`exact_match` with ignore_case and ignore_punctuation (no strip after them)."""
  return (prediction.lower().translate(_NO_PUNCTUATION)
          == reference.lower().translate(_NO_PUNCTUATION))


def ai2d_correct(reply: str, gold_letter: str) -> tuple[str, bool]:
  answer = ai2d_filter(reply).strip()
  return answer, exact_match(answer, gold_letter)


# --------------------------------------------------------------------- MMMU
def mmmu_choice(response: str, options: Mapping[str, str], rng: random.Random
                ) -> tuple[str, bool]:
  """`parse_multi_choice_response`: (letter, whether a rule found it)."""
  for ch in (",", ".", "!", "?", ";", ":", "'"):
    response = response.strip(ch)
  response = f" {response} "
  letters = list(options)
  candidates = [c for c in letters if f"({c})" in response]
  bracketed = bool(candidates)
  by_text = False
  if not candidates:
    candidates = [c for c in letters if f"{c} " in response]
  if not candidates:
    candidates = [c for c in letters if f"{c}." in response]
  if not candidates and len(response.split()) > 5:
    candidates = [c for c, text in options.items() if text.lower() in response.lower()]
    by_text = bool(candidates)
  if not candidates:
    return rng.choice(letters), False
  if len(candidates) == 1:
    return candidates[0], True
  if by_text:
    where = [response.lower().rfind(options[c].lower()) for c in candidates]
  elif bracketed:
    where = [response.rfind(f"({c})") for c in candidates]
  else:
    where = [response.rfind(f" {c} ") for c in candidates]
  return candidates[where.index(max(where))], True   # np.argmax: the first maximum


_NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),                          # 1,234,567
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),                         # 1.5e3
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # 12, 1.5, .5
)
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ",
                   "result ")
_TRIVIAL_KEYS = (":", ",", ".", "!", "?", ";", "'")


def extract_numbers(text: str) -> list[str]:
  return [m for pattern in _NUMBER_PATTERNS for m in pattern.findall(text)]


def _is_number(text: str) -> bool:
  try:
    float(text.replace(",", ""))
    return True
  except ValueError:
    return False


def normalize_str(text: str) -> list:
  """MMMU's normal form: [a number rounded to 2 decimals] or [lowercase text]
  (one character is padded with a space on either side)."""
  text = text.strip()
  if _is_number(text):
    return [round(float(text.replace(",", "")), 2)]
  text = text.lower()
  return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_responses(response: str) -> list[str]:
  response = response.strip().strip(".").lower()
  # The sentence split needs a capital after ". ", which lowercasing removed.
  parts = re.split(r"\.\s(?=[A-Z])|\n", response)
  keys = []
  for i, part in enumerate(parts):
    indicators = _KEY_INDICATORS + (("=",) if i == len(parts) - 1 else ())
    shortest = None
    for indicator in indicators:
      if indicator in part:
        tail = part.split(indicator)[-1].strip()
        # An empty tail counts as "none yet": the next indicator replaces it.
        if not shortest or len(tail) < len(shortest):
          shortest = tail
    if shortest and shortest.strip() not in _TRIVIAL_KEYS:
      keys.append(shortest)
  return keys or [response]


def parse_open_response(response: str) -> list:
  """`parse_open_response`: the normalised key phrases and numbers of a reply."""
  keys = _key_responses(response)
  preds = keys + [n for k in keys for n in extract_numbers(k)]
  out = []
  for p in preds:
    for norm in normalize_str(p):
      if norm not in out:
        out.append(norm)
  return out


def eval_open(gold: str, predictions: Sequence) -> bool:
  """A normalised gold string inside a text prediction, or an equal number."""
  golds = normalize_str(gold)
  for p in predictions:
    if isinstance(p, str):
      if any(isinstance(g, str) and g in p for g in golds):
        return True
    elif p in golds:
      return True
  return False


# ---------------------------------------------------------------- MathVista
def mathvista_extract(response: str, choices: Sequence[str], multiple_choice: bool,
                      answer_type: str) -> str | None:
  """The rule stage of `extract_answer`; None: the reference asks its judge."""
  if not response:
    return ""
  if multiple_choice and response in choices:
    return response
  if answer_type == "int":
    try:
      return str(int(response))
    except ValueError:
      pass
  if answer_type == "float":
    try:
      return str(float(response))
    except ValueError:
      pass
  return None


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance (unit costs), what `Levenshtein.distance` computes."""
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
  return row[-1]


def mathvista_normalize(extraction: str, choices: Sequence[str], multiple_choice: bool,
                        answer_type: str, precision: int) -> str | None:
  """`normalize_extracted_answer`: a choice text, a number's text, or None."""
  if multiple_choice:
    extraction = str(extraction).strip()
    letters = re.findall(r"\(([a-zA-Z])\)", extraction)
    if letters:
      extraction = letters[0].upper()
    options = [chr(ord("A") + i) for i in range(len(choices))]
    if extraction in options:
      return choices[options.index(extraction)]
    distances = [edit_distance(extraction, c) for c in choices]
    return choices[distances.index(min(distances))]
  try:
    if answer_type == "int":
      return str(int(float(extraction)))
    if answer_type == "float":
      return str(round(float(extraction), precision))
  except (ValueError, TypeError, OverflowError):
    return None
  return str(extraction) if answer_type == "list" else extraction


def safe_equal(prediction, answer) -> bool:
  return str(prediction).strip() == str(answer).strip()


# lmms-eval's MathVista extraction prompt (mathvista_evals.DEMO_PROMPT), verbatim.
MATHVISTA_DEMO = """
Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""  # noqa: E501  (the reference's text, line for line)


def mathvista_judge_prompt(query: str, response: str) -> str:
  """`create_test_prompt(DEMO_PROMPT, query, response)`."""
  return f"{MATHVISTA_DEMO.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "
