r"""VLMEvalKit's rules and judge prompts, as EVE's fork of it ran them.

Ported from a reading of VLMEvalKit's `vlmeval/utils/matching_util.py`
(can_infer), `vlmeval/smp/misc.py` (process_punctuation),
`vlmeval/dataset/utils/yorn.py`, `multiple_choice.py` and `mathvista.py`, and
EVE's `vlmeval/vlm/qwen{2,3}_vl/model.py` (the boxed post-processing). The
quirks are the reference's and are kept on purpose, because they decide
verdicts (tests/eval_corpus.json holds replies where each one matters):

  * `can_infer` reads a letter only when exactly one option letter is a
    token and its first occurrence is among the last 4 tokens; option texts
    only in a reply at most twice their summed length.
  * `process_punctuation` deletes or blanks 21 characters, keeps `*`, `:`,
    `'`; its period pattern `(?!<=\d)` is a lookahead, so a period is dropped
    unless a digit follows, and `re.UNICODE` lands in `sub`'s count argument:
    only the first 32 periods go.
  * EVE's post-processing reads the last `\boxed{` to its balancing brace, or
    to the end of the reply when it is never closed (a reply cut at the token
    limit); `\boxed {` with a space is not a box.
  * MathVista's rule stage ("prefetch") passes a multiple-choice reply
    whenever `can_infer` reads any letter, but an integer or float reply only
    when `int(reply)` / `float(reply)` equals the gold: `3.7`, `1,000` and
    `42.0` raise for an integer and go to the judge, and so does a wrong
    number. A free-form text or list answer is never correct (its check
    compares the string 'None').

The judge prompts are the reference's texts, byte for byte: a different
prompt is a different judge.
"""
from __future__ import annotations

import re
from typing import Mapping

# Replies VLMEvalKit maps to the "Z" option (a refusal).
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
API_FAILURE = "Failed to obtain answer via API"
_LETTER_SEPARATORS = ".()[],:;!*#{}"


# ------------------------------------------------------------------ matching
def can_infer_option(answer: str, choices: Mapping[str, str]) -> str | None:
  """An option letter standing alone near the end of the answer, "Z", or None."""
  if API_FAILURE in answer:
    return None
  if any(r in answer for r in REFUSALS):
    return "Z"
  for c in _LETTER_SEPARATORS:
    answer = answer.replace(c, " ")
  tokens = answer.split()
  found = [c for c in choices if c in tokens]
  if len(found) == 1:
    # First occurrence among the last 4 tokens: "A dog ..." is an article.
    return found[0] if tokens.index(found[0]) > len(tokens) - 5 else None
  if not found and "Z" in tokens:
    return "Z"
  return None


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
  """The one option whose text is in a short answer (case-insensitive), or None."""
  answer = answer.lower()
  if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
    return None
  hits = [k for k, v in choices.items() if str(v).lower() in answer]
  return hits[0] if len(hits) == 1 else None


def can_infer(answer, choices: Mapping[str, str]) -> str | None:
  """VLMEvalKit's MCQ matcher: a letter of `choices`, "Z", or None (undecided)."""
  answer = str(answer)
  return can_infer_option(answer, choices) or can_infer_text(answer, choices)


_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")   # the reference's pattern, lookahead and all
_PERIODS_DROPPED = int(re.UNICODE)             # sub()'s count in the reference: 32


def process_punctuation(text: str) -> str:
  """VLMEvalKit's VQA punctuation step (see the module docstring for its quirks)."""
  out = text
  drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
  for p in _PUNCTUATION:
    if drop_all or p + " " in text or " " + p in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out, _PERIODS_DROPPED)


def yes_no(output: str) -> str:
  """VLMEvalKit's YOrN_Extraction: 'Yes', 'No' or 'Unknown'."""
  words = process_punctuation(str(output).lower()).split()
  yes, no = "yes" in words, "no" in words
  if yes and not no:
    return "Yes"
  if no and not yes:
    return "No"
  return "Unknown"


# -------------------------------------------------- EVE's boxed post-processing
def _to_closing_brace(text: str) -> str | None:
  """`text` (after an opening brace) up to its balancing brace, or all of it when
  never closed; None for an empty text (the reference then keeps the reply)."""
  depth = 1
  for i, ch in enumerate(text):
    if ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
    if depth == 0:
      return text[:i]
  return text if text else None


def eve_post_process(reply: str, family: str = "qwen3_vl") -> str:
  r"""EVE's fork: the reply replaced by its last \boxed{...} content.

  The Qwen2/2.5-VL entry first keeps what follows a last `</think>` and
  strips; the Qwen3-VL (vLLM) entry reads the reply as generated. A content
  that is `\text{...}` is peeled by the same scan from the last `\text{`.
  """
  if family == "qwen2_5_vl":
    reply = reply.split("</think>")[-1].strip()
  if "\\boxed{" not in reply:
    return reply
  inner = _to_closing_brace(reply.split("\\boxed{")[-1])
  if inner is None:
    return reply
  if inner.startswith("\\text{") and inner.endswith("}"):
    peeled = _to_closing_brace(inner.split("\\text{")[-1])
    if peeled is not None:
      inner = peeled
  return inner


# --------------------------------------------------------------- MathVista
def _number(kind: str, text):
  return int(text) if kind == "int" else float(text)


def mathvista_prefetch(prediction: str, options: Mapping[str, str], gold: str,
                       answer_type: str) -> str | None:
  """VLMEvalKit's `post_check(prefetch=True)`: the rule's answer, or None (-> judge)."""
  if options:
    return can_infer(prediction, options)
  if answer_type in ("int", "float"):
    try:
      if _number(answer_type, prediction) == _number(answer_type, gold):
        return str(prediction)
    except (ValueError, TypeError, OverflowError):
      return None
    return None
  return None


def mathvista_correct(answer: str, options: Mapping[str, str], gold: str,
                      answer_type: str) -> bool:
  """VLMEvalKit's `post_check(prefetch=False)` of an answer (the rule's or the judge's)."""
  if options:
    return can_infer(answer, options) == gold
  if answer_type in ("int", "float"):
    try:
      return _number(answer_type, answer) == _number(answer_type, gold)
    except (ValueError, TypeError, OverflowError):
      return False
  return str(gold) == "None"   # str(None) == str(answer): the reference's text/list branch


# ------------------------------------------------------------ relaxed accuracy
def _relaxed_float(text: str) -> float | None:
  try:
    if text.endswith("%"):
      return float(text.rstrip("%")) / 100.0
    return float(text)
  except ValueError:
    return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05
                        ) -> bool:
  """Pix2Struct's relaxed accuracy (VLMEvalKit and lmms-eval share it)."""
  prediction, target = str(prediction), str(target)
  p, t = _relaxed_float(prediction), _relaxed_float(target)
  if p is not None and t:
    return abs(p - t) / abs(t) <= max_relative_change
  return prediction.lower() == target.lower()


# ------------------------------------------------------------ judge prompts
# VLMEvalKit's GPT matcher prompts, verbatim (multiple_choice.build_prompt,
# yorn.YOrN_match_prompt, mathvista.build_mathvista_gpt4_prompt).
_MCQ_JUDGE = (
    "You are an AI assistant who will help me to match "
    "an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. "
    "If the meaning of all options are significantly different from the answer, output Z. "
    "Your should output a single uppercase character in A, B, C, D (if they are valid options),"
    " and Z. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: Z\n"
    "Example 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: ")

_YES_NO_JUDGE = (
    "You are an AI assistant who will help me to match an answer with two options of a question. "
    "The options are only Yes / No. "
    "You are provided with a question and an answer, "
    "and you need to find which option (Yes / No) is most similar to the answer. "
    "If the meaning of all options are significantly different from the answer, output Unknown. "
    "Your should output a single word among the following 3 choices: Yes, No, Unknown.\n"
    "Example 1: \n"
    "Question: Is the word in this image 'Hello'?\nAnswer: The word in this image is 'Hello'."
    "\nYour output: Yes\n"
    "Example 2: \n"
    "Question: Is the word in this image 'Hello'?\n"
    "Answer: The word in this image is not 'Hello'.\nYour output: No\n"
    "Example 3: \n"
    "Question: {}?\nAnswer: {}\nYour output: ")

_MATHVISTA_TASK = ("\nPlease read the following example.\n"
                   "Then extract the answer from the model response and type it at the end of the "
                   "prompt.\n\n")
_MATHVISTA_EXAMPLES = (
    "\nHint: Please answer the question requiring an integer answer and provide the final value,\n"
    "e.g., 1, 2, 3, at the end.\n\nQuestion: Which number is missing?\n\n"
    "Model response: The number missing in the sequence is 14.\n\nExtracted answer: 14\n",
    "\nHint: Please answer the question requiring a floating-point number with one decimal place"
    " and provide the final value,\ne.g., 1.2, 1.3, 1.4, at the end.\n\n"
    "Question: What is the fraction of females facing the camera?\n\n"
    "Model response: The fraction of females facing the camera is 0.6,\n"
    "which means that six out of ten females in the group are facing the camera.\n\n"
    "Extracted answer: 0.6\n",
    "\nHint: Please answer the question requiring a floating-point number with two decimal places"
    " and provide the final value,\ne.g., 1.23, 1.34, 1.45, at the end.\n\n"
    "Question: How much money does Luca need to buy a sour apple candy and a butter-scotch candy?"
    " (Unit: $)\n\n"
    "Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.\n\n"
    "Extracted answer: 1.45\n",
    "\nHint: Please answer the question requiring a Python list as an answer and provide the final"
    " list,\ne.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.\n\n"
    "Question: Between which two years does the line graph saw its maximum peak?\n\n"
    "Model response: The line graph saw its maximum peak between 2007 and 2008.\n\n"
    "Extracted answer: [2007, 2008]\n",
    "\nHint: Please answer the question and provide the correct option letter, e.g., A, B, C, D,"
    " at the end.\n\nQuestion: What fraction of the shape is blue?\n\n"
    "Choices: (A) 3/11 (B) 8/11 (C) 6/11 (D) 3/5\n\n"
    "Model response: The correct answer is (B) 8/11.\n\nExtracted answer: B\n",
)


def option_text(options: Mapping[str, str]) -> str:
  return "There are several options: \n" + "".join(f"{k}. {v}\n" for k, v in options.items())


def mcq_judge_prompt(question: str, options: Mapping[str, str], prediction: str) -> str:
  return _MCQ_JUDGE.format(question, option_text(options), prediction)


def yes_no_judge_prompt(question: str, prediction: str) -> str:
  return _YES_NO_JUDGE.format(question, prediction)


def mathvista_judge_prompt(question: str, prediction: str) -> str:
  """The extraction prompt; `question` is the TSV's question (MathVista's full query)."""
  examples = "".join(e + "\n" for e in _MATHVISTA_EXAMPLES)
  # "respone" and the missing newline before "Extracted answer:" are the reference's.
  return (_MATHVISTA_TASK + examples + question + "\n" + "Model respone: " + str(prediction)
          + "Extracted answer:")
