"""EVE task text: the Challenger's instructions and the Solver's questions.

The Challenger writes `edit_image` plus 4 argument dicts; the sandbox applies
them to a source image. From those 4 outputs this module builds multiple-choice
questions whose answers are correct by construction (EVE question types):

  type 0: images = original + the 4 outputs in a shuffled order; "which image do
          args k produce?"; answer = the letter of output k.
  type 1: images = original + output k; "which args produced it?"; the options
          are the 4 dicts, shuffled; answer = the letter of args k.
  type 2: images = original + the 4 outputs; match each to the shuffled args;
          answer = 4 letters, graded with partial credit (off by default).

Shuffles and the choice of k come from `runner.stable_seed(seed, program, type, k)`, a
stable hash (never Python's salted `hash()`), so the same program always yields the same
questions. Coordinates in programs are absolute pixels (Qwen2.5-VL), so every
prompt states the source image's size.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from evejax.data.transforms import Family
from evejax.recipes import runner

LETTERS = "ABCD"
QUESTION_TYPES = (0, 1, 2)
# How the 4 results and argument sets are laid out: "shuffled" (the paper) by a
# stable hash; "sorted" by the arguments' text, so that where the options' values
# come from one fixed set (a 4-colour palette) each value always has the same
# letter and answering needs no in-context lookup (small experiments' worlds,
# type 1: a sorted type 0 is answered from the colour its question names, no image).
OPTION_ORDERS = ("shuffled", "sorted")
_NUM = len(LETTERS)


@dataclasses.dataclass(frozen=True)
class Question:
  """One Solver question.

  Attributes:
    qtype: 0, 1 or 2 (see the module docstring).
    images: PIL images in prompt order; images[0] is the original ("image_0").
    text: the full question, including the edit_image source and the request
      to answer in \\boxed{}.
    options: option texts in letter order (A, B, ...).
    answer: the gold answer: one letter, or 4 letters for type 2.
    meta: how the question was made (k, the shown order, ...), for logs.
  """
  qtype: int
  images: list
  text: str
  options: list[str]
  answer: str
  meta: dict = dataclasses.field(default_factory=dict)


def format_args(args: Mapping[str, Any]) -> str:
  """An args dict as the Python literal the program wrote."""
  return repr(dict(args))


def _size_line(image: Image.Image) -> str:
  return f"image_0 is {image.width}x{image.height} pixels.\n"


def _code_block(edit_source: str) -> str:
  return f"```python\n{edit_source.strip()}\n```\n"


_CHOICE_TAIL = ("Work out what the code does with these arguments, compare the images "
                "carefully, and put the letter of your answer in \\boxed{}.")


def _type0(source_image, edit_source, args_list, outputs, k, order):
  shown = ", ".join(f"image_{i + 1}" for i in range(_NUM))
  text = (_size_line(source_image)
          + f"image_0 is the original image; {shown} are the results of calling `edit_image` "
            "on image_0 with four different sets of arguments, in no particular order.\n"
          + _code_block(edit_source)
          + f"Question: which image does `edit_image(image_0, **{format_args(args_list[k])})` "
            "produce?\nOptions:\n"
          + "".join(f"{LETTERS[i]}. image_{i + 1}\n" for i in range(_NUM))
          + _CHOICE_TAIL)
  return Question(
      qtype=0, images=[source_image] + [outputs[i] for i in order], text=text,
      options=[f"image_{i + 1}" for i in range(_NUM)], answer=LETTERS[order.index(k)],
      meta={"k": k, "order": order})


def _type1(source_image, edit_source, args_list, outputs, k, order):
  options = [format_args(args_list[i]) for i in order]
  text = (_size_line(source_image)
          + "image_0 is the original image; image_1 is the result of calling `edit_image` on "
            "image_0 with one of the argument sets listed below.\n"
          + _code_block(edit_source)
          + "Question: which arguments turn image_0 into image_1?\nOptions:\n"
          + "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options))
          + _CHOICE_TAIL)
  return Question(qtype=1, images=[source_image, outputs[k]], text=text, options=options,
                  answer=LETTERS[order.index(k)], meta={"k": k, "order": order})


def _type2(source_image, edit_source, args_list, outputs, order):
  options = [format_args(args_list[i]) for i in order]
  gold = "".join(LETTERS[order.index(j)] for j in range(_NUM))
  text = (_size_line(source_image)
          + "image_0 is the original image; image_1, image_2, image_3 and image_4 are the "
            "results of calling `edit_image` on image_0, each with a different one of the "
            "argument sets A-D below.\n"
          + _code_block(edit_source)
          + "Argument sets:\n"
          + "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options))
          + "Question: which argument set produced each image? Answer with four letters in "
            "the order image_1, image_2, image_3, image_4; for example \\boxed{BDAC} means "
            "image_1 came from B, image_2 from D, image_3 from A and image_4 from C. Work out "
            "what the code does, compare the images carefully, and put the four letters in "
            "\\boxed{}.")
  return Question(qtype=2, images=[source_image] + list(outputs), text=text, options=options,
                  answer=gold, meta={"order": order})


def build_questions(source_image: Image.Image, edit_source: str,
                    args_list: Sequence[Mapping[str, Any]], outputs: Sequence[Image.Image],
                    *, types: Sequence[int] = (0, 1), seed: int = 0,
                    ks: Sequence[int] | None = None,
                    option_order: str = "shuffled") -> list[Question]:
  """The Solver's questions about one executed program.

  Args:
    source_image: the image the program was applied to (image_0).
    edit_source: the program text above `args_list` (imports + edit_image), shown
      verbatim in every question.
    args_list: the program's 4 argument dicts.
    outputs: outputs[i] = edit_image(copy of source_image, **args_list[i]).
    types: question types to build, in order (0, 1, 2).
    seed: run-level seed mixed into every shuffle and choice of k.
    ks: for types 0 and 1, which args to ask about (one question per k);
      default one k per type chosen by hash.
    option_order: one of OPTION_ORDERS: the order of the shown results (type 0)
      and of the argument sets (types 1 and 2).

  Returns:
    One question per (type, k), types in the order given.
  """
  if len(args_list) != _NUM or len(outputs) != _NUM:
    raise ValueError(f"EVE questions need {_NUM} args dicts and {_NUM} outputs, got "
                     f"{len(args_list)} and {len(outputs)}.")
  if bad := [t for t in types if t not in QUESTION_TYPES]:
    raise ValueError(f"Unknown EVE question types {bad}; use some of {QUESTION_TYPES}.")
  if option_order not in OPTION_ORDERS:
    raise ValueError(f"Unknown EVE option order {option_order!r}; use one of {OPTION_ORDERS}.")
  program_key = edit_source.strip() + "\n" + repr([dict(a) for a in args_list])

  def order_of(qtype, k):
    if option_order == "sorted":
      return sorted(range(_NUM), key=lambda i: format_args(args_list[i]))
    return _order(seed, program_key, qtype, k)

  questions = []
  for qtype in types:
    if qtype == 2:
      order = order_of(qtype, None)
      questions.append(_type2(source_image, edit_source, args_list, outputs, order))
      continue
    chosen = ks if ks is not None else [runner.stable_seed(seed, program_key, qtype, "k") % _NUM]
    for k in chosen:
      if not 0 <= k < _NUM:
        raise ValueError(f"k={k} is not an index into args_list (0..{_NUM - 1}).")
      order = order_of(qtype, k)
      build = _type0 if qtype == 0 else _type1
      questions.append(build(source_image, edit_source, args_list, outputs, int(k), order))
  return questions


def _order(seed: int, program_key: str, qtype: int, k: int | None) -> list[int]:
  rng = np.random.default_rng(runner.stable_seed(seed, program_key, qtype, k))
  return [int(i) for i in rng.permutation(_NUM)]


# ---------------------------------------------------------------------------
# Warm-start SFT pairs.


def solver_reasoning(question: Question) -> str:
  """A short rationale that follows from how the question was built."""
  order = question.meta.get("order", list(range(_NUM)))
  if question.qtype == 0:
    pos = LETTERS.index(question.answer)
    return (f"Reading the code, the requested arguments produce the edit shown in "
            f"image_{pos + 1}; the other candidates come from different arguments.")
  if question.qtype == 1:
    return (f"Comparing image_1 with image_0, the edit matches the arguments "
            f"{question.options[LETTERS.index(question.answer)]}.")
  pairs = ", ".join(f"image_{j + 1} comes from {LETTERS[order.index(j)]}" for j in range(_NUM))
  return f"Matching each edit to its arguments: {pairs}."


def named_option(question: Question, reply: str) -> int | None:
  """The option a type-1 reply restates before its answer, as in the rationale
  ("... matches the arguments {...}"): its index, or None if it names none or
  several. Separates reading the image (naming the right arguments) from the
  lookup that follows (answering that option's letter)."""
  if question.qtype != 1:
    return None
  before = reply.rsplit("\\boxed", 1)[0]
  named = [i for i, option in enumerate(question.options) if option in before]
  return named[0] if len(named) == 1 else None


# `solver_sft_pair`'s reasoning (and config.warmstart.solver_reasoning) that stands
# for each question's own rationale, `solver_reasoning(question)`.
RATIONALE = "rationale"


def solver_sft_pair(question: Question, reasoning: str = RATIONALE) -> tuple[str, str]:
  """(prompt text, target) for Solver SFT: reasoning (RATIONALE: the question's
  own; else the text given), then the answer in \\boxed{}."""
  reasoning = solver_reasoning(question) if reasoning == RATIONALE else reasoning
  return question.text, f"{reasoning.strip()}\n\n\\boxed{{{question.answer}}}"


# Conventions of the Challenger's prompt, by model family in the published code:
# Qwen2.5-VL sees absolute pixels, the image size and <think>; Qwen3-VL relative
# 0-1000 coordinates and <thinking> (config.eve.coordinates / think_tag).
COORDINATES = ("absolute", "relative")
THINK_TAGS = ("think", "thinking")


def _check_conventions(coordinates: str, think_tag: str) -> None:
  if coordinates not in COORDINATES:
    raise ValueError(f"coordinates={coordinates!r}: use one of {COORDINATES}.")
  if think_tag not in THINK_TAGS:
    raise ValueError(f"think_tag={think_tag!r}: use one of {THINK_TAGS}.")


def challenger_instructions(examples: Sequence[str], image_size: Sequence[int],
                            style: str = "full", *, max_function_chars: int,
                            max_comments: int, coordinates: str = "absolute",
                            think_tag: str = "think") -> str:
  """The Challenger's prompt text: task, rules, 1-2 queue example programs, format.

  Args:
    examples: full example programs (imports, edit_image, args_list), usually 1
      or 2 drawn from the example queue.
    image_size: (width, height) of the source image in pixels.
    style: "full" (the method's rules, for real models) or "compact" (the same
      contract in a few lines, for tiny CPU models where every token costs).
    max_function_chars, max_comments: the queue's limits on the function text
      (config.queue), stated in the rules.
    coordinates: "absolute" (pixels of the stated image size) or "relative"
      (0-1000 on each axis, converted by edit_image).
    think_tag: "think" or "thinking", the reasoning block's tag.
  """
  _check_conventions(coordinates, think_tag)
  w, h = int(image_size[0]), int(image_size[1])
  absolute = coordinates == "absolute"
  think = f"<{think_tag}>...</{think_tag}>"
  if style == "compact":
    shown = "".join(f"```python\n{p.strip()}\n```\n" for p in examples)
    which = f"this {w}x{h} image" if absolute else "this image (coordinates 0-1000)"
    return (f"Write edit_image(img, **params) and args_list: 4 dicts giving 4 different "
            f"edits of {which}. PIL/numpy/math only, no randomness or files. "
            f"Example:\n{shown}Answer: {think} then one ```python block.")
  if style != "full":
    raise ValueError(f"challenger instructions style {style!r}: use 'full' or 'compact'.")
  parts = [
      "# Task\n"
      "Write a Python function `edit_image(img: Image.Image, **params) -> Image.Image` that "
      "edits the given image, and a list `args_list` of exactly 4 parameter dicts for it. "
      "Each dict will be passed to edit_image on a fresh copy of the image.\n\n"
      + (f"The input image is {w}x{h} pixels.\n\n" if absolute else "\n")
      + "# Rules\n"
      "1. Write one Python code block with the imports, `edit_image`, and the literal "
      "`args_list = [...]`.\n"
      "2. The 4 parameter sets must give 4 clearly different-looking results; results that "
      "are near-identical, mostly black or empty are rejected.\n"
      "3. Use only PIL, numpy and math. No randomness, no reading or saving files.\n"
      + (f"4. Coordinates are absolute pixels of this {w}x{h} image; keep boxes and points "
         "inside it.\n" if absolute else
         "4. Coordinates in the parameters are relative, from 0 to 1000 on each axis of the "
         "image; edit_image converts them to pixels with img.size.\n")
      + f"5. Keep edit_image under {max_function_chars} characters with at most "
      f"{max_comments} comments.\n"
      "6. The examples show the format only: design your own edit and parameters around "
      "the content of this image; do not copy them.\n",
  ]
  if examples:
    parts.append("# Examples\n")
    for i, program in enumerate(examples, start=1):
      parts.append(f"## Example {i}\n```python\n{program.strip()}\n```\n")
  parts.append(f"# Output\nObserve the image and reason inside {think}, then give "
               "the final code in one ```python block.")
  return "\n".join(parts)


def challenger_think_text(family: Family, args_list: Sequence[Mapping[str, Any]],
                          image_size: Sequence[int], coordinates: str = "absolute") -> str:
  """A plain rationale for a built-in program, for warm-start targets."""
  w, h = int(image_size[0]), int(image_size[1])
  bounds = f"{w}x{h}" if coordinates == "absolute" else "0-1000"
  return (f"The image is {w}x{h} pixels. I will write an edit_image that {family.description} "
          f"I pick 4 parameter sets that act on different parts of the image or in "
          f"different ways, so that the 4 results look clearly different, and keep all "
          f"coordinates inside {bounds}.")


def challenger_sft_target(family: Family, args_list: Sequence[Mapping[str, Any]],
                          think_text: str, think_tag: str = "think") -> str:
  """A Challenger target: a think block, then the family's program in a python block."""
  return (f"<{think_tag}>\n{think_text.strip()}\n</{think_tag}>\n\n"
          f"```python\n{family.program(args_list).strip()}\n```")


def challenger_sft_pair(family: Family, rng: np.random.Generator,
                        image_size: Sequence[int], examples: Sequence[str], *,
                        limits: Mapping[str, Any], think_text: str | None = None,
                        style: str = "full") -> tuple[str, str]:
  """(prompt text, target) for Challenger SFT with freshly sampled arguments.

  `limits`: the `challenger_instructions` keyword arguments (the queue's
  limits, `coordinates` and `think_tag`).
  """
  args_list = family.sample(rng, int(image_size[0]), int(image_size[1]))
  coordinates = limits.get("coordinates", "absolute")
  think = think_text or challenger_think_text(family, args_list, image_size, coordinates)
  return (challenger_instructions(examples, image_size, style, **limits),
          challenger_sft_target(family, args_list, think, limits.get("think_tag", "think")))


def library_questions(families: Sequence[Family], source, rng: np.random.Generator,
                      count: int, question_types: Sequence[int]) -> list[dict]:
  """`count` Solver-data records from the static library (the experiments' control):
  each a random family of `families` with fresh arguments on a random image of
  `source`, question types in turn."""
  records = []
  for j in range(count):
    fam = families[int(rng.integers(len(families)))]
    image = int(rng.integers(len(source)))
    records.append({"image": image, "program": fam.program(fam.sample(rng, *source.size_of(image))),
                    "qtype": question_types[j % len(question_types)], "k": None,
                    "seed": int(rng.integers(2**31))})
  return records
