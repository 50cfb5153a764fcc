"""Runs one contract (EVE edit, SVG render, plot) on trusted inputs.

This is the code that executes *inside* the jailed job process (and, for the
benchmark's "inline" baseline, in-process). It reports through `emit(header,
payload)` frames only: one ("image", index, height, width, channels) frame
with raw pixels per output, then "done", or a single "error" frame with a
reason and the tail of the traceback.

Nothing this module reports is trusted by the host: the host re-checks every
shape and pixel (see `programs.assemble`). The harness still keeps its own
references to what it calls (captured before the program runs) and hides the
evejax modules, so that casual monkeypatching cannot redirect it.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import os
import sys
import traceback
from typing import Any, Callable

import numpy as np
from PIL import Image

Emit = Callable[[dict, Any], None]
PROGRAM_FILENAME = "<program>"
_THIS_FILE = __file__
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif",
                   ".tiff")

# Captured at import time, before any program can patch PIL.
_Image = Image.Image
_copy = Image.Image.copy
_convert = Image.Image.convert
_tobytes = Image.Image.tobytes
_isinstance = builtins.isinstance


class _Failed(Exception):
  """A classified failure, raised inside the harness and emitted once."""

  def __init__(self, reason: str, detail: str):
    super().__init__(reason, detail)
    self.reason, self.detail = reason, detail


def traceback_tail(exc: BaseException, lines: int = 12,
                   chars: int = 3000) -> str:
  """The last lines of a traceback, without the harness's own frames."""
  try:
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if f.filename != _THIS_FILE])
    text = "".join(te.format())
  except BaseException:  # pylint: disable=broad-except
    text = f"{type(exc).__name__} (traceback unavailable)"
  text = "\n".join(text.rstrip("\n").splitlines()[-lines:])
  return text[-chars:]


def _classify(exc: BaseException) -> str:
  if _isinstance(exc, MemoryError):
    return "memory"
  return "exception"


def _compile(source: str):
  linecache.cache[PROGRAM_FILENAME] = (
      len(source), None, source.splitlines(True), PROGRAM_FILENAME)
  try:
    return compile(source, PROGRAM_FILENAME, "exec", dont_inherit=True)
  except (SyntaxError, ValueError, OverflowError, RecursionError,
          MemoryError) as e:
    if _isinstance(e, SyntaxError):
      detail = f"line {e.lineno}: {e.msg}"
    else:
      detail = f"{type(e).__name__}: {e}"
    raise _Failed("syntax_error", detail) from None


_evejax_modules: tuple[tuple[str, ...], int] | None = None


def _is_evejax(name: str) -> bool:
  return name == "evejax" or name.startswith("evejax.")


def remember_modules() -> None:
  """Lists the evejax modules now, in the zygote, for `_hide_evejax`.

  Scanning sys.modules in the job would touch (refcount) every module name
  the job inherited, a copy-on-write page fault for each page they sit on.
  """
  global _evejax_modules
  _evejax_modules = (tuple(m for m in sys.modules if _is_evejax(m)),
                     len(sys.modules))


def _hide_evejax() -> None:
  if _evejax_modules is not None and len(sys.modules) == _evejax_modules[1]:
    names = _evejax_modules[0]
  else:  # something was imported since: look again
    names = [m for m in sys.modules if _is_evejax(m)]
  for name in names:
    sys.modules.pop(name, None)


def _exec(code, hide: bool) -> dict:
  scope = {"__name__": "__program__", "__builtins__": builtins}
  if hide:
    _hide_evejax()
  try:
    exec(code, scope)  # pylint: disable=exec-used
  except BaseException as e:  # pylint: disable=broad-except
    raise _Failed(_classify(e), traceback_tail(e)) from None
  return scope


def _to_pil(out: Any, what: str) -> Image.Image:
  if _isinstance(out, _Image):
    return out
  if _isinstance(out, np.ndarray):
    arr = out
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
      raise _Failed("invalid_output",
                    f"{what} is an array of shape {arr.shape}; expected HxW, "
                    "HxWx3 or HxWx4")
    if arr.dtype != np.uint8:
      if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5
      arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
      arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr))
  raise _Failed("invalid_output",
                f"{what} is {type(out).__name__}, not a PIL.Image.Image")


def _emit_image(emit: Emit, index: int, out: Any, what: str,
                max_pixels: int) -> None:
  im = _to_pil(out, what)
  w, h = im.size
  if w < 1 or h < 1 or w * h > max_pixels:
    raise _Failed("invalid_output",
                  f"{what} is {w}x{h}; outputs may have at most {max_pixels} "
                  "pixels")
  mode = im.mode
  alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      mode == "P" and "transparency" in im.info)
  try:
    if alpha:
      im = _convert(im, "RGBA") if mode != "RGBA" else im
    elif mode != "RGB":
      im = _convert(im, "RGB")
    data = _tobytes(im)
  except MemoryError:
    raise _Failed("memory", f"converting {what} ran out of memory") from None
  except Exception as e:  # pylint: disable=broad-except
    raise _Failed("invalid_output",
                  f"{what} (mode {mode}) cannot be converted to RGB: {e}"
                  ) from None
  emit({"t": "image", "i": index, "h": h, "w": w, "c": 4 if alpha else 3},
       data)


# ------------------------------------------------------------------ EVE

def _run_eve(req: dict, payload, emit: Emit, hide: bool) -> None:
  w, h = int(req["w"]), int(req["h"])
  if len(payload) != w * h * 3:
    raise _Failed("sandbox_error", f"input has {len(payload)} bytes for "
                  f"{w}x{h} RGB")
  src = Image.frombytes("RGB", (w, h), payload)  # copies out of the buffer
  args = [ast.literal_eval(s) for s in req["args"]]
  code = _compile(req["source"])
  scope = _exec(code, hide)
  fn = scope.get("edit_image")
  if not callable(fn):
    raise _Failed("invalid_program",
                  "after running, the program has no callable edit_image")
  max_pixels = int(req["max_pixels"])
  for k, kwargs in enumerate(args):
    img = _copy(src)  # a fresh copy: programs draw on img in place
    try:
      out = fn(img, **kwargs)
    except BaseException as e:  # pylint: disable=broad-except
      raise _Failed(_classify(e),
                    f"edit_image(img, **args_list[{k}]) raised:\n"
                    + traceback_tail(e)) from None
    _emit_image(emit, k, out, f"edit_image(img, **args_list[{k}])",
                max_pixels)


# ------------------------------------------------------------------ SVG

class _SizeProbe(Exception):
  pass


def _run_svg(req: dict, emit: Emit) -> None:
  import cairosvg.parser  # pylint: disable=g-import-not-at-top
  import cairosvg.surface  # pylint: disable=g-import-not-at-top

  class SizeSurface(cairosvg.surface.PNGSurface):

    def _create_surface(self, width, height):
      raise _SizeProbe(width, height)

  try:
    tree = cairosvg.parser.Tree(bytestring=req["svg"].encode("utf-8"),
                                unsafe=False)
  except MemoryError:
    raise _Failed("memory", "parsing the SVG ran out of memory") from None
  except Exception as e:  # pylint: disable=broad-except
    raise _Failed("syntax_error", f"SVG does not parse: {type(e).__name__}: "
                  f"{str(e)[:500]}") from None
  try:
    SizeSurface(tree, None, 96)
    raise _Failed("invalid_output", "SVG size could not be determined")
  except _SizeProbe as p:
    width, height = float(p.args[0]), float(p.args[1])
  except _Failed:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _Failed("invalid_output", f"SVG size: {type(e).__name__}: {e}"
                  ) from None
  if not (width > 0 and height > 0):
    raise _Failed("invalid_output", f"SVG size {width}x{height} is empty")
  if max(width, height) > req["max_side"]:
    raise _Failed("invalid_output", f"SVG size {width:g}x{height:g} has a "
                  f"side over {req['max_side']} px")
  if max(width, height) / min(width, height) > req["max_aspect"]:
    raise _Failed("invalid_output", f"SVG size {width:g}x{height:g} has an "
                  f"aspect ratio over {req['max_aspect']:g}")
  scale = min(1.0, (req["max_render_pixels"] / (width * height)) ** 0.5)
  ow, oh = max(1, round(width * scale)), max(1, round(height * scale))
  try:
    surface = cairosvg.surface.PNGSurface(
        tree, None, 96, output_width=ow, output_height=oh,
        background_color=req.get("background"))
  except MemoryError:
    raise _Failed("memory", "rendering the SVG ran out of memory") from None
  except Exception as e:  # pylint: disable=broad-except
    raise _Failed("exception", f"rendering failed: {type(e).__name__}: "
                  f"{str(e)[:500]}") from None
  cs = surface.cairo
  cs.flush()
  im = Image.frombuffer("RGBA", (cs.get_width(), cs.get_height()),
                        bytes(cs.get_data()), "raw", "BGRa", cs.get_stride(), 1)
  _emit_image(emit, 0, im, "the SVG render", int(req["max_render_pixels"]))


# ------------------------------------------------------------------ plots

def _open_figure():
  plt = sys.modules.get("matplotlib.pyplot")
  if plt is None or not plt.get_fignums():
    return None
  fig = plt.gcf()
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba()).copy()


def _saved_image(max_pixels: int):
  names = sorted(n for n in os.listdir(".")
                 if n.lower().endswith(_IMAGE_SUFFIXES) and os.path.isfile(n))
  if not names:
    return None
  if len(names) > 1:
    raise _Failed("invalid_output",
                  f"the program saved {len(names)} images ({names[:4]}); "
                  "expected one")
  with Image.open(names[0]) as im:
    w, h = im.size
    if w * h > max_pixels:
      raise _Failed("invalid_output", f"saved image {names[0]} declares "
                    f"{w}x{h} pixels; the limit is {max_pixels}")
    im.load()
    return im.copy()


def _run_plot(req: dict, emit: Emit, hide: bool) -> None:
  code = _compile(req["source"])
  scope = _exec(code, hide)
  max_pixels = int(req["max_render_pixels"])
  try:
    if callable(scope.get("draw")):
      out, what = scope["draw"](), "draw()"
    elif scope.get("image") is not None:
      out, what = scope["image"], "the module-level `image`"
    else:
      out, what = _open_figure(), "the open matplotlib figure"
      if out is None:
        out, what = _saved_image(max_pixels), "the saved image"
  except _Failed:
    raise
  except BaseException as e:  # pylint: disable=broad-except
    raise _Failed(_classify(e), traceback_tail(e)) from None
  if out is None:
    raise _Failed("invalid_output", "the program produced no image: define "
                  "draw() returning one, set `image`, leave a matplotlib "
                  "figure open, or save one image file")
  _emit_image(emit, 0, out, what, max_pixels)


# ------------------------------------------------------------------ entry

def run(req: dict, payload, emit: Emit, hide: bool = True) -> None:
  """Runs the request and emits its frames; never raises.

  Args:
    req: the request header the host built (`programs.prepare`).
    payload: raw input pixels (EVE; any buffer, e.g. a read-only mapping) or
      empty.
    emit: writes one frame.
    hide: remove evejax modules from sys.modules first (jailed runs only).
  """
  Image.MAX_IMAGE_PIXELS = int(req.get("max_decode_pixels", 40_000_000))
  try:
    kind = req["kind"]
    if kind == "eve":
      _run_eve(req, payload, emit, hide)
    elif kind == "svg":
      _run_svg(req, emit)
    elif kind == "plot":
      _run_plot(req, emit, hide)
    else:
      raise _Failed("sandbox_error", f"unknown job kind {kind!r}")
  except _Failed as f:
    emit({"t": "error", "reason": f.reason, "detail": f.detail}, b"")
    return
  except BaseException as e:  # pylint: disable=broad-except
    emit({"t": "error", "reason": _classify(e),
          "detail": traceback_tail(e)}, b"")
    return
  emit({"t": "done"}, b"")
