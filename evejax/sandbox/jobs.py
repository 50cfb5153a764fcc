"""The sandbox's data types: jobs in, results out.

A job is what a recipe asks to run (untrusted source plus trusted inputs); a
`JobResult` is always data, whatever the code did: valid images, or a
classified failure with a short explanation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

import numpy as np
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray, bytes]


class Reason:
  """Why a job ended. Plain strings so that results serialise as JSON."""
  OK = "ok"
  NO_CODE = "no_code"                  # empty program / SVG
  SYNTAX_ERROR = "syntax_error"        # does not parse (or is not UTF-8)
  INVALID_PROGRAM = "invalid_program"  # breaks the contract before running
  EXCEPTION = "exception"              # raised (detail: traceback tail)
  TIMEOUT = "timeout"                  # wall-clock or CPU-time limit
  MEMORY = "memory"                    # address-space limit (MemoryError)
  FORBIDDEN = "forbidden"              # forbidden syscall or static policy
  INVALID_OUTPUT = "invalid_output"    # ran, but the output failed a check
  CRASHED = "crashed"                  # died by a signal / exited early
  SANDBOX_ERROR = "sandbox_error"      # the sandbox itself failed (rare)

  ALL = ("ok", "no_code", "syntax_error", "invalid_program", "exception",
         "timeout", "memory", "forbidden", "invalid_output", "crashed",
         "sandbox_error")


@dataclasses.dataclass(frozen=True)
class EveJob:
  """EVE contract: `edit_image(img, **params)` applied for each `args_list`.

  Attributes:
    source: the program text (the Challenger's code block).
    image: the source image: PIL image, uint8 array (HxW or HxWx3/4), or the
      bytes of an encoded image file (decoded with decompression-bomb limits).
    num_args: how many distinct dicts `args_list` must hold.
  """
  source: str | bytes
  image: ImageLike
  num_args: int = 4


@dataclasses.dataclass(frozen=True)
class SvgJob:
  """MM-Zero contract: render SVG text to an image (cairosvg)."""
  svg: str | bytes
  background: str | None = "white"


@dataclasses.dataclass(frozen=True)
class PlotJob:
  """Plotting Python: a program that draws with PIL or matplotlib.

  The image is, in order of preference: what `draw()` returns, a module-level
  `image`, the open matplotlib figure, or the one image file it saved.
  """
  source: str | bytes


Job = Union[EveJob, SvgJob, PlotJob]


@dataclasses.dataclass
class JobResult:
  """What came of one job. `images` are HxWx3 uint8 arrays (RGB)."""
  ok: bool
  reason: str
  detail: str = ""
  images: list[np.ndarray] = dataclasses.field(default_factory=list)
  args: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  stdout: str = ""
  stderr: str = ""
  wall_s: float = 0.0
  kind: str = ""
  function_source: str = ""  # EVE: the program text before `args_list`
  stats: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    """A JSON-safe summary (image shapes instead of pixels)."""
    out = dataclasses.asdict(self)
    out["images"] = [list(im.shape) for im in self.images]
    out["args"] = [{k: _jsonable(v) for k, v in a.items()} for a in self.args]
    return out


def _jsonable(v: Any) -> Any:
  if isinstance(v, (str, int, float, bool)) or v is None:
    return v
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, dict):
    return {str(k): _jsonable(x) for k, x in v.items()}
  return repr(v)


def failure(reason: str, detail: str, kind: str = "", **kw) -> JobResult:
  return JobResult(ok=False, reason=reason, detail=detail, kind=kind, **kw)
