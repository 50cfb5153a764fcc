"""`Family`: one EVE-contract transformation, as program text plus an argument sampler.

A family's `source` is the text of one function `edit_image(img, **params)` that
uses only PIL, numpy and math; `program(args_list)` turns it into the full
program the EVE contract asks for (imports, the function, a literal
`args_list`). The import lines are derived from the names the function uses, so
a family never carries imports it does not need.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

NUM_ARGS = 4

_PIL_MODULES = (
    "Image", "ImageChops", "ImageColor", "ImageDraw", "ImageEnhance",
    "ImageFilter", "ImageFont", "ImageOps", "ImageStat",
)
_OTHER_MODULES = {"np": "import numpy as np", "math": "import math"}
# Names a sandbox rejects or that make a program non-deterministic.
_FORBIDDEN_NAMES = ("random", "open", "eval", "exec", "__import__", "os", "sys")

ArgsSampler = Callable[[np.random.Generator, int, int], list[dict]]


def imports_for(source: str) -> str:
  """Import lines for the PIL/numpy/math names that `source` uses."""
  names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
  pil = [m for m in _PIL_MODULES if m in names or m == "Image"]
  lines = [f"from PIL import {', '.join(pil)}"]
  lines += [line for name, line in _OTHER_MODULES.items() if name in names]
  return "\n".join(sorted(lines, key=lambda s: (not s.startswith("import"), s)))


def _is_literal(value: Any) -> bool:
  """True for JSON-able Python literals: what `ast.literal_eval(repr(x))` gives back."""
  if value is None or isinstance(value, (bool, int, str)):
    return True
  if isinstance(value, float):
    return math.isfinite(value)
  if isinstance(value, (list, tuple)):
    return all(_is_literal(v) for v in value)
  if isinstance(value, dict):
    return all(isinstance(k, str) and _is_literal(v) for k, v in value.items())
  return False


def format_args_list(args_list: Sequence[Mapping[str, Any]]) -> str:
  """The `args_list = [...]` literal, one dict per line like the published seeds."""
  rows = "".join(f"    {dict(a)!r},\n" for a in args_list)
  return f"args_list = [\n{rows}]"


def check_args_list(args_list: Sequence[Mapping[str, Any]], name: str = "") -> None:
  """Raises ValueError unless `args_list` is 4 distinct dicts of literal values."""
  where = f" for family {name!r}" if name else ""
  if not isinstance(args_list, (list, tuple)) or len(args_list) != NUM_ARGS:
    raise ValueError(f"args_list{where} must be a list of exactly {NUM_ARGS} dicts, "
                     f"got {args_list!r}.")
  for a in args_list:
    if not isinstance(a, dict) or not _is_literal(a):
      raise ValueError(f"args_list{where} holds {a!r}: each entry must be a dict of "
                       "str keys to JSON-able literals (int, float, str, bool, list).")
  if len({repr(sorted(a.items())) for a in args_list}) != NUM_ARGS:
    raise ValueError(f"args_list{where} repeats a dict: the 4 entries must differ.")


@dataclasses.dataclass(frozen=True)
class Family:
  """One transformation family.

  Attributes:
    name: short identifier, e.g. "highlight_box".
    source: the text of `def edit_image(img, ...)` alone, no imports; it may use
      PIL modules (Image, ImageDraw, ...), `np` and `math`.
    sample_args: (rng, width, height) -> 4 distinct args dicts of JSON-able
      literals, with absolute pixel coordinates valid for that image size.
    description: one sentence on what the parameters do (used in prompts).
  """
  name: str
  source: str
  sample_args: ArgsSampler
  description: str

  def __post_init__(self):
    object.__setattr__(self, "source", self.source.strip("\n"))
    where = f"transformation family {self.name!r}"
    try:
      tree = ast.parse(self.source)
    except SyntaxError as e:
      raise ValueError(f"{where}: source does not parse ({e}).") from e
    if (len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef)
        or tree.body[0].name != "edit_image"):
      raise ValueError(f"{where}: source must be exactly one `def edit_image(img, ...)`; "
                       "put imports nowhere (they are derived) and helpers inside it.")
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if bad := sorted(used & set(_FORBIDDEN_NAMES)):
      raise ValueError(f"{where}: source uses {bad}; programs must be deterministic and "
                       "touch no files (the sandbox rejects them).")
    if ".save(" in self.source or any(isinstance(n, (ast.Import, ast.ImportFrom))
                                      for n in ast.walk(tree)):
      raise ValueError(f"{where}: source may not import modules or save files.")

  @property
  def imports(self) -> str:
    return imports_for(self.source)

  @property
  def function_text(self) -> str:
    """Imports + function: what EVE measures, shows in questions and deduplicates."""
    return f"{self.imports}\n\n\n{self.source}"

  def program(self, args_list: Sequence[Mapping[str, Any]]) -> str:
    """The full EVE program: imports, `edit_image`, and the `args_list` literal."""
    check_args_list(args_list, self.name)
    return f"{self.function_text}\n\n\n{format_args_list(args_list)}\n"

  def sample(self, rng: np.random.Generator, width: int, height: int) -> list[dict]:
    """`sample_args`, checked against the contract (4 distinct literal dicts)."""
    args_list = self.sample_args(rng, width, height)
    check_args_list(args_list, self.name)
    return args_list


def load_library(import_path: str) -> dict[str, Family]:
  """Loads extra families named in config as "package.module:attribute".

  The attribute may be a dict name -> Family, a sequence of Family, or a
  zero-argument callable returning either.
  """
  module_name, sep, attr = import_path.partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"Transformation library {import_path!r} must look like "
                     "'package.module:attribute'.")
  try:
    obj = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"Cannot load transformation library {import_path!r}: {e}. Check "
                     "that the module is importable (on PYTHONPATH) and defines it.") from e
  if callable(obj) and not isinstance(obj, Family):
    obj = obj()
  families = list(obj.values()) if isinstance(obj, Mapping) else list(obj)
  for f in families:
    if not isinstance(f, Family):
      raise ValueError(f"Transformation library {import_path!r} holds {f!r}; every "
                       "entry must be an evejax.data.transforms.Family.")
  out = {f.name: f for f in families}
  if len(out) != len(families):
    raise ValueError(f"Transformation library {import_path!r} repeats a family name.")
  return out
