"""EvoLMM rewards: continuous self-consistency and an entropy band-pass.

From reference/METHODS.md, for N Solver samples of one question:

* answers are ``<answer>...</answer>`` else the last non-empty line,
  normalised (``answers.normalize_text``); p_hat(a) = share of the N answers
  equal to a.
* Solver: r_i = p_hat(a_i)^gamma * (1 - lambda * clip((w_i - tau) / tau, 0, 1)),
  gamma 0.7, lambda 0.1, tau 6 words, w_i = words before the answer tag (or
  before the last non-empty line when there is no tag).
* Proposer: H = -sum_a p_hat(a) ln p_hat(a); r = exp(-(H - mu)^2 / (2 sigma^2)),
  mu 0.90, sigma 0.35.

Choice documented here: an empty answer still counts towards N and the
distribution (empties form one class, as plain string counting does), but its
own Solver reward is 0, so agreeing on saying nothing is never rewarded.
"""

import collections
import math
from typing import Sequence

from evejax.rewards.registry import Reward
from evejax.rl import answers


def parse_question(text: str, tag: str = "question") -> tuple[str | None, str]:
  """(question, reason) from a Proposer reply's ``<question>...</question>``."""
  found = answers.tagged_contents(text, tag)
  if not found or not found[-1].strip():
    return None, "no_question_tag"
  return found[-1].strip(), "ok"


def extract_answer(reply: str, tag: str = "answer") -> str:
  """The normalised answer of a Solver reply ('' if none)."""
  return answers.normalize_text(answers.extract_tagged_answer(reply, tag))


def has_answer_tag(reply: str, tag: str = "answer") -> bool:
  """Whether `reply` holds a closed <tag>...</tag>."""
  return bool(answers.tagged_contents(reply, tag))


def words_before_answer(reply: str, tag: str = "answer") -> int:
  """Whitespace words before the first answer tag, else before the last line."""
  reply = reply or ""
  start = reply.find(f"<{tag}>")
  if start < 0:
    lines = [ln for ln in reply.splitlines() if ln.strip()]
    return sum(len(ln.split()) for ln in lines[:-1])
  return len(reply[:start].split())


def answer_shares(normalised_answers: Sequence[str]) -> list[float]:
  """p_hat(a_i) for each answer: the share of all answers equal to it."""
  counts = collections.Counter(normalised_answers)
  n = len(normalised_answers)
  return [counts[a] / n for a in normalised_answers]


def answer_entropy(normalised_answers: Sequence[str]) -> float:
  """Shannon entropy (nats) of the empirical answer distribution."""
  n = len(normalised_answers)
  if not n:
    return 0.0
  counts = collections.Counter(normalised_answers).values()
  return -sum(c / n * math.log(c / n) for c in counts)


def solver_rewards(replies: Sequence[str], *, gamma: float = 0.7,
                   length_penalty: float = 0.1, tau: float = 6.0,
                   tag: str = "answer") -> list[Reward]:
  """Continuous self-consistency rewards for the N replies to one question."""
  normed = [extract_answer(r, tag) for r in replies]
  shares = answer_shares(normed)
  out = []
  for reply, ans, p in zip(replies, normed, shares):
    words = words_before_answer(reply, tag)
    excess = min(max((words - tau) / tau, 0.0), 1.0)
    if not ans:
      out.append(Reward(0.0, "no_answer", {"share": p, "words": words}))
      continue
    value = p ** gamma * (1.0 - length_penalty * excess)
    out.append(Reward(value, "ok", {"share": p, "words": words,
                                    "answer": ans}))
  return out


def proposer_reward(replies: Sequence[str], *, mu: float = 0.9,
                    sigma: float = 0.35, tag: str = "answer") -> Reward:
  """Entropy band-pass reward of a question, from its N Solver replies."""
  h = answer_entropy([extract_answer(r, tag) for r in replies])
  value = math.exp(-((h - mu) ** 2) / (2.0 * sigma ** 2))
  return Reward(value, "ok" if replies else "no_solver_samples",
                {"entropy": h})


def majority_rewards(replies: Sequence[str], tag: str = "answer") -> list[Reward]:
  """The paper's baseline: 1 for an answer equal to the group's majority, else 0."""
  normed = [extract_answer(r, tag) for r in replies]
  top = collections.Counter(a for a in normed if a).most_common(1)
  majority = top[0][0] if top else None
  return [Reward(float(bool(a) and a == majority), "ok" if a else "no_answer", {"answer": a})
          for a in normed]


def answer_statistics(replies: Sequence[str], tag: str = "answer") -> dict[str, float]:
  """How far a question's N answers agree: the mean share of an answer, whether all
  agree, how many distinct ones, their entropy, and the share with no answer."""
  normed = [extract_answer(r, tag) for r in replies]
  return {"consistency": float(sum(answer_shares(normed)) / max(len(normed), 1)),
          "unanimous": float(len(set(normed)) == 1), "distinct_answers": float(len(set(normed))),
          "entropy": answer_entropy(normed),
          "no_answer": float(sum(not a for a in normed) / max(len(normed), 1))}
