"""Answer extraction and grading shared by all recipes (host-side, pure Python).

Extraction:
  * ``extract_boxed``: content of the last complete ``\\boxed{...}`` (nested
    braces balanced; ``\\fbox`` too). A truncated final box falls back to the
    last complete one.
  * ``extract_letter``: the first option letter (A-D) of an answer (EVE).
  * ``extract_tagged_answer``: ``<answer>...</answer>`` else the last non-empty
    line (EvoLMM).

Grading, ``grade(pred, gold, kind)``; a ``\\boxed{}`` in either is unwrapped:
  * 'letter': first option letter of pred == gold's letter. By default the
    letter must stand alone (``B``, ``(B)``, ``B.``, ``\\text{B}``), so that
    ``\\boxed{Answer: C}`` reads as C; ``letter_mode='first_char'`` is the EVE
    reference rule (first A-D character anywhere, which reads that as A).
  * 'number': both parse as numbers and agree within ``rel_tol``.
  * 'text': normalised strings are equal, or both are numbers that agree.
  * 'math': 'text', or mathematically equal by the math_verify package.

Normalisation (EvoLMM's): lowercase, drop commas, collapse whitespace, strip
punctuation. "Strip punctuation" is read as *surrounding* sentence punctuation,
quotes and brackets (``"(b)."`` -> ``b``); signs, decimal points, ``%`` and
``/`` stay because they change what a number means.

math_verify is guarded: inputs longer than ``max_chars`` and inputs that look
like words rather than maths are not sent to it (it parses "blue" as a product
of symbols), every call is wrapped in try/except, and the timeouts it
implements with SIGALRM are used only on the main thread (elsewhere its
timeouts would raise, so there the length cap is the guard). Any failure means
"not equal" and grading falls back to string equality.

"Invalid" answers (none, n/a, unknown, ...; the MM-Zero list) do not count as
votes in consistency clustering (``cluster_answers``).
"""

import math
import re
import threading
from typing import Callable, Sequence

GRADE_KINDS = ("letter", "number", "text", "math")

# MM-Zero's non-answers: they must not inflate self-consistency.
INVALID_ANSWERS = frozenset({"", "none", "n/a", "na", "null", "unknown", "-"})

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_WRAPPER_RE = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|operatorname|mbox)\s*"
    r"\{([^{}]*)\}")
_LATEX_SPACING_RE = re.compile(r"\\[,;:! ]|\\left|\\right|\\displaystyle")
_FRAC_RE = re.compile(r"\\d?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_STRIP_CHARS = ".;:!?\"'`()[]{}*_ \t\n"


def extract_boxed(text: str | None) -> str | None:
  """Content of the last complete ``\\boxed{...}`` in text, or None."""
  if not text:
    return None
  starts = [m.end() for m in _BOXED_RE.finditer(text)]
  for start in reversed(starts):
    depth = 1
    for i in range(start, len(text)):
      if text[i] == "{":
        depth += 1
      elif text[i] == "}":
        depth -= 1
        if depth == 0:
          return text[start:i].strip()
  return None


def extract_letter(answer: str | None, letters: str = "ABCD",
                   letter_mode: str = "standalone") -> str | None:
  """First option letter in ``answer``, or None.

  Args:
    answer: an extracted answer (e.g. the content of ``\\boxed{}``).
    letters: the valid option letters (uppercase, case-sensitive).
    letter_mode: 'standalone' (letter not part of a word) or 'first_char'
      (the EVE reference: first such character anywhere).
  """
  if not answer:
    return None
  answer = _unwrap_latex(answer)
  chars = re.escape(letters)
  if letter_mode == "standalone":
    m = re.search(rf"(?<![A-Za-z])([{chars}])(?![A-Za-z])", answer)
  elif letter_mode == "first_char":
    m = re.search(rf"([{chars}])", answer)
  else:
    raise ValueError(f"Unknown letter_mode {letter_mode!r}; valid: "
                     "['first_char', 'standalone'].")
  return m.group(1) if m else None


def tagged_contents(text: str | None, tag: str = "answer") -> list[str]:
  """The contents of every closed ``<tag>...</tag>`` in `text`, in order."""
  return re.findall(rf"<{tag}>(.*?)</{tag}>", text or "", flags=re.DOTALL)


def extract_tagged_answer(text: str | None, tag: str = "answer") -> str:
  """Last ``<tag>...</tag>`` content, else the last non-empty line, else ''."""
  if not text:
    return ""
  found = tagged_contents(text, tag)
  if found:
    return found[-1].strip()
  lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
  return lines[-1] if lines else ""


def _unwrap_latex(s: str) -> str:
  """Drops \\text{}-style wrappers, spacing commands and $ delimiters."""
  prev = None
  while prev != s:  # wrappers may nest: \text{\textbf{B}}
    prev, s = s, _LATEX_WRAPPER_RE.sub(r"\1", s)
  s = _LATEX_SPACING_RE.sub(" ", s)
  return s.replace("\\%", "%").replace("$", "")


def normalize_text(s: str | None) -> str:
  """Lowercase, drop commas, collapse whitespace, strip end punctuation."""
  if s is None:
    return ""
  s = _unwrap_latex(str(s)).lower().replace(",", "")
  s = " ".join(s.split())
  # A leading '.' belongs to a number ('.5'); a trailing one ends a sentence.
  return s.lstrip(_STRIP_CHARS.replace(".", "")).rstrip(_STRIP_CHARS)


def parse_number(s: str | None) -> float | None:
  """A number written plainly ('1,000', '-3.5', '50%', '1/2', '\\frac{1}{2}').

  A percent sign is dropped ('50%' -> 50.0). Returns None for anything else.
  """
  if s is None:
    return None
  t = _FRAC_RE.sub(r"(\1)/(\2)", _unwrap_latex(str(s)))
  t = t.replace(",", "").replace(" ", "")
  t = t.lstrip(_STRIP_CHARS.replace(".", "") + "$").rstrip(_STRIP_CHARS)
  t = t.removesuffix("%").replace("(", "").replace(")", "")
  if _NUMBER_RE.fullmatch(t):
    return float(t)
  num, sep, den = t.partition("/")
  if sep and _NUMBER_RE.fullmatch(num) and _NUMBER_RE.fullmatch(den):
    if float(den) != 0.0:
      return float(num) / float(den)
  return None


def numbers_equal(a: float, b: float, rel_tol: float = 1e-5,
                  abs_tol: float = 1e-9) -> bool:
  """Tolerant float comparison (EVE uses rel_tol 1e-5)."""
  return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def _looks_mathematical(s: str) -> bool:
  # Words (two or more letters in a row once LaTeX commands are removed) are
  # text: math_verify would read "blue" as b*l*u*e.
  return re.search(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", s)) is None


def math_equal(pred: str, gold: str, *, timeout_s: int = 5,
               max_chars: int = 200) -> bool:
  """Mathematical equivalence by math_verify; False on any doubt or failure."""
  pred, gold = pred.strip(), gold.strip()
  if not pred or not gold or max(len(pred), len(gold)) > max_chars:
    return False
  if not (_looks_mathematical(pred) and _looks_mathematical(gold)):
    return False
  try:
    import math_verify  # pylint: disable=g-import-not-at-top
    # SIGALRM timeouts only work on the main thread.
    timeout = (timeout_s if threading.current_thread() is
               threading.main_thread() else None)
    wrap = lambda s: s if "$" in s else f"${s}$"
    g = math_verify.parse(wrap(gold), parsing_timeout=timeout)
    p = math_verify.parse(wrap(pred), parsing_timeout=timeout)
    if not g or not p:
      return False
    return bool(math_verify.verify(g, p, timeout_seconds=timeout))
  except Exception:  # pylint: disable=broad-except
    return False


def _unbox(s: str) -> str:
  if "\\boxed" in s or "\\fbox" in s:
    boxed = extract_boxed(s)
    if boxed is not None:
      return boxed
  return s


def grade(pred: str | None, gold: str | None, kind: str = "text", *,
          letters: str = "ABCD", letter_mode: str = "standalone",
          rel_tol: float = 1e-5, math_timeout_s: int = 5,
          math_max_chars: int = 200) -> bool:
  """Whether ``pred`` answers ``gold``; see the module docstring for kinds."""
  if kind not in GRADE_KINDS:
    raise ValueError(
        f"Unknown grade kind {kind!r}; valid: {list(GRADE_KINDS)}.")
  if pred is None or gold is None:
    return False
  pred, gold = _unbox(str(pred)), _unbox(str(gold))
  if kind == "letter":
    p = extract_letter(pred, letters, letter_mode)
    g = extract_letter(gold, letters, "standalone")
    return p is not None and p == g
  pn, gn = parse_number(pred), parse_number(gold)
  if pn is not None and gn is not None:
    return numbers_equal(pn, gn, rel_tol)
  if kind == "number":
    return False
  p_norm = normalize_text(pred)
  if p_norm and p_norm == normalize_text(gold):
    return True
  if kind == "math":
    return math_equal(pred, gold, timeout_s=math_timeout_s,
                      max_chars=math_max_chars)
  return False


def grade_letter_sequence(pred: str | None, gold: str,
                          letters: str = "ABCD",
                          max_repeats: int = 2) -> float:
  """Partial credit for EVE's matching question (type 2): matched / len(gold).

  The option letters of pred are read in order; any letter used more than
  ``max_repeats`` times or a length different from gold scores 0.
  """
  if not pred or not gold:
    return 0.0
  seq = [c for c in _unbox(pred) if c in letters]
  if len(seq) != len(gold) or any(seq.count(c) > max_repeats for c in letters):
    return 0.0
  return sum(a == b for a, b in zip(seq, gold)) / len(gold)


def is_invalid_answer(answer: str | None,
                      invalid: frozenset[str] = INVALID_ANSWERS) -> bool:
  """True for a missing answer or a non-answer ('none', 'N/A', 'unknown'...)."""
  if answer is None:
    return True
  return " ".join(str(answer).split()).lower().rstrip(".") in invalid


def answers_equal(a: str, b: str, *, use_math: bool = True) -> bool:
  """Symmetric answer equality for clustering (MM-Zero's consistency).

  Equal after lowercasing and collapsing whitespace, or (with use_math) equal
  by ``grade(kind='math')`` in either direction.
  """
  if " ".join(a.lower().split()) == " ".join(b.lower().split()):
    return True
  if not use_math:
    return False
  return grade(a, b, "math") or grade(b, a, "math")


def cluster_answers(answers: Sequence[str | None],
                    equal: Callable[[str, str], bool] = answers_equal,
                    invalid: frozenset[str] = INVALID_ANSWERS) -> list[int]:
  """Greedy clustering of answers: label per answer, -1 for invalid ones.

  Each answer joins the first cluster whose first member it equals, else it
  starts a new cluster (MM-Zero's majority-vote procedure).
  """
  labels, reps = [], []
  for ans in answers:
    if is_invalid_answer(ans, invalid):
      labels.append(-1)
      continue
    for k, rep in enumerate(reps):
      if equal(ans, rep):
        labels.append(k)
        break
    else:
      reps.append(ans)
      labels.append(len(reps) - 1)
  return labels


def majority_answer(answers: Sequence[str | None], **kwargs
                    ) -> tuple[str | None, int, int]:
  """(representative of the largest cluster, its size, number of valid answers).

  Ties go to the cluster formed first. With no valid answers: (None, 0, 0).
  """
  labels = cluster_answers(answers, **kwargs)
  valid = [(lab, ans) for lab, ans in zip(labels, answers) if lab >= 0]
  if not valid:
    return None, 0, 0
  counts: dict[int, int] = {}
  first: dict[int, str] = {}
  for lab, ans in valid:
    counts[lab] = counts.get(lab, 0) + 1
    first.setdefault(lab, ans)
  best = max(counts, key=lambda k: (counts[k], -k))
  return first[best], counts[best], len(valid)
