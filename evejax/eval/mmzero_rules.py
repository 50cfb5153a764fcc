r"""MM-Zero's evaluation: its boxed rule and its LLM judge (zli12321/MM-Zero).

Ported from a reading of MM-Zero's evaluation scripts (`eval_generate.py`,
`llm_judge_eval.py`): the answer is the last `\boxed{...}` without nested
braces; the rule compares `strip().lower().rstrip('.')` of it and of the gold;
the headline is a judge (Qwen2.5-14B-Instruct in the paper) asked about
*every* item with the prompt below as raw text (no chat template), greedy,
at most 16 new tokens, stopped at a newline; an item is correct when the
judge's first word starts with "yes".
"""
from __future__ import annotations

import re

_FLAT_BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def last_flat_boxed(reply: str) -> str | None:
  found = _FLAT_BOXED.findall(reply)
  return found[-1].strip() if found else None


def _canonical(text: str) -> str:
  return str(text).strip().lower().rstrip(".")


def rule_correct(answer: str, gold: str) -> bool:
  return _canonical(answer) == _canonical(gold)


JUDGE_INSTRUCTION = (
    "You are an answer correctness judge. Given a question, the gold (correct) answer, "
    "and the model's answer, determine if the model's answer is correct: equivalent to the "
    "gold answer or semantically the same. Consider numeric equality (e.g. 14 vs 14.0), "
    "option equivalence (A vs A.), and paraphrases. Answer with exactly one word: Yes or No.")
JUDGE_MAX_NEW_TOKENS = 16
_MAX_QUESTION, _MAX_ANSWER = 400, 600


def judge_answer(extracted: str | None, reply: str) -> str:
  """What the judge is shown: the boxed answer, else the reply's first 600 characters."""
  if extracted is not None and str(extracted).strip():
    return str(extracted).strip()
  return (reply or "").strip()[:_MAX_ANSWER]


def judge_prompt(question: str, gold: str, answer: str) -> str:
  q = (question or "").strip()
  shown_q = q[:_MAX_QUESTION] + ("..." if len(q) > _MAX_QUESTION else "")
  g = (gold or "").strip()[:_MAX_ANSWER]
  a = (answer or "").strip()
  shown_a = a[:_MAX_ANSWER] + ("..." if len(a) > _MAX_ANSWER else "")
  return (f"{JUDGE_INSTRUCTION}\n\nQuestion: {shown_q}\n\nGold answer: {g}\n\n"
          f"Model answer: {shown_a}\n\n"
          "Is the model answer correct? Answer with exactly one word: Yes or No.")


def judge_says_correct(output: str) -> bool:
  """The judge's text up to its first newline (the stop string); first word 'yes...'."""
  text = (output or "").split("\n")[0].strip().lower()
  words = text.split()
  return bool(words) and words[0].startswith("yes")
