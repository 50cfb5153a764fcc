"""The evaluator's one internal record of a benchmark item, and of a skipped one.

Every reader (VLMEvalKit TSV, a dataset saved by HF `datasets`, JSONL + an image
folder) turns a row into an `Item`; prompts, graders and reports read only
`Item`s, so a benchmark file format is a reader's concern alone.

Images stay encoded (bytes or a file path) until a prompt is built: a benchmark
of 1000 items holds its files' bytes, not 1000 decoded images, and an image
that does not decode is found there and counted as that item's failure reason.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Union

import PIL.Image

OPTION_LETTERS = "ABCDEFGHIJ"
ANSWER_TYPES = ("mcq", "yesno", "int", "float", "text", "list", "open")

# An image as a reader found it: encoded bytes, a file path, or a PIL image.
ImageRef = Union[bytes, str, PIL.Image.Image]


@dataclasses.dataclass
class Item:
  """One benchmark question.

  `options` maps option letters to their texts in letter order (empty for
  open questions); `answer` is the gold: an option letter for multiple
  choice, "Yes"/"No" for yes/no, else the gold text. `extra` keeps the
  source's remaining small columns (e.g. MathVista's `query`, HallusionBench
  set/figure/question ids) for benchmark-specific prompts and metrics.
  """
  id: str
  question: str
  answer: str
  images: list[ImageRef] = dataclasses.field(default_factory=list)
  options: dict[str, str] = dataclasses.field(default_factory=dict)
  hint: str = ""
  answer_type: str = ""          # one of ANSWER_TYPES, "" = the benchmark's default
  precision: int | None = None   # decimals of a float answer
  unit: str = ""
  category: str = ""
  subcategory: str = ""
  split: str = ""
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A row that could not become an item, or an item that could not be asked.

  `reason` is a short counted name (`missing_column`, `no_image`,
  `undecodable_image`, `prompt_too_long`, `no_options`, ...); `detail` says
  what exactly, for the results file.
  """
  id: str
  reason: str
  detail: str = ""
