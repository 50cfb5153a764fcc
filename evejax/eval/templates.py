r"""Prompt texts as each paper's evaluation harness writes them (reference/EVALUATION.md).

Three families of templates, one per harness; a profile (profiles.py) picks
one, and the benchmark's `style` picks the template inside it:

  vlmevalkit  (EVE)    mcq: "Hint: ..\n" "Question: ..\nOptions:\nA. ..\n" + "Please
                       select the correct answer from the options above. \n";
                       yesno and math: the question alone (MathVista: its full
                       query); vqa: + "\nAnswer the question using a single word
                       or phrase."
  lmms_eval   (EvoLMM) letter-directly layouts (ai2d, mmmu), ChartQA's "single
                       word", MathVista's format-prompt (unit, choices, a hint
                       by answer type), MMMU's open "single word or phrase".
  mmzero      (MM-Zero) the question (options as "A. .." lines) + the Solver's
                       step-by-step \boxed{} instruction.

Images are never in the text: every harness here puts all images before it.
"""
from __future__ import annotations

from evejax.eval.records import Item

STYLES = ("mcq", "yesno", "vqa", "chartqa", "mathvista", "mmmu")


def _option_lines(item: Item) -> str:
  return "\n".join(f"{k}. {v}" for k, v in item.options.items())


# ---------------------------------------------------------------- VLMEvalKit
def vlmevalkit(item: Item, style: str) -> str:
  """VLMEvalKit's dataset prompt (`use_custom_prompt=False`, as EVE ran it)."""
  if style in ("mcq", "mmmu"):
    text = f"Hint: {item.hint}\n" if item.hint else ""
    text += f"Question: {item.question}\n"
    if item.options:
      text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in item.options.items())
      text += "Please select the correct answer from the options above. \n"
    return text
  if style in ("vqa", "chartqa"):
    return f"{item.question}\nAnswer the question using a single word or phrase."
  if style == "mathvista":
    return str(item.extra.get("query") or item.question)
  return item.question  # yesno


EVE_BOXED_SUFFIX = "\nPlease put your final answer within \\boxed{}."


def eve_post_processing(prompt: str) -> str:
  r"""EVE's post-processing ON: strip the text, ask for \boxed{}."""
  return prompt.strip() + EVE_BOXED_SUFFIX


# ----------------------------------------------------------------- lmms-eval
LETTER_DIRECTLY = "Answer with the option's letter from the given choices directly."
_MATHVISTA_HINTS = {
    "int": "Answer the question using a single integer number.",
    "list": "Answer the question using a Python list.",
}


def _mathvista_format(item: Item) -> str:
  """lmms-eval's mathvista_testmini_format: question (unit), choices, a hint."""
  if "query" not in item.extra:
    # A VLMEvalKit TSV holds only the full query (hint and choices included).
    return item.question
  parts = [item.question + (f" (Unit: {item.unit})" if item.unit else "")]
  if item.options:
    parts.append(_option_lines(item))
    parts.append(LETTER_DIRECTLY)
  elif item.answer_type == "float":
    places = {1: "one decimal place", 2: "two decimal places"}.get(
        item.precision or 1, f"{item.precision} decimal places")
    parts.append(f"Answer the question using a single floating-point number with {places}.")
  else:
    parts.append(_MATHVISTA_HINTS.get(item.answer_type, _MATHVISTA_HINTS["int"]))
  return "\n".join(parts)


def lmms_eval(item: Item, style: str) -> str:
  """lmms-eval's task prompts (the defaults EvoLMM ran)."""
  if style == "chartqa":
    return f"{item.question}\nAnswer the question with a single word."
  if style == "mathvista":
    return _mathvista_format(item)
  if style == "mmmu":
    if item.options:
      return f"{item.question}\n{_option_lines(item)}\n\n{LETTER_DIRECTLY}"
    return f"{item.question}\n\nAnswer the question using a single word or phrase."
  if style == "mcq":
    return f"{item.question}\n{_option_lines(item)}\n{LETTER_DIRECTLY}"
  if style == "vqa":
    return f"{item.question}\nAnswer the question using a single word or phrase."
  return item.question  # yesno


# ------------------------------------------------------------------- MM-Zero
MMZERO_SUFFIX = (
    " Please reason step by step based on the question and image. Put your final answer "
    "inside \\boxed{} as a single number, single word, or short phrase only (e.g. "
    "\\boxed{42}, \\boxed{blue}, \\boxed{Q1})\u2014no units, no full sentences, so the "
    "grader can match it.")


def mmzero(item: Item, style: str) -> str:
  """MM-Zero's evaluation prompt: the problem, then the Solver's instruction."""
  problem = item.question if style != "mathvista" else str(item.extra.get("query") or item.question)
  if item.options and style != "mathvista":
    problem += "\n" + _option_lines(item)
  if item.hint:
    problem = f"{item.hint}\n{problem}"
  return problem + MMZERO_SUFFIX


TEMPLATES = {"vlmevalkit": vlmevalkit, "lmms_eval": lmms_eval, "mmzero": mmzero}
