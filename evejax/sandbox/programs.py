"""The three contracts, host side: read a job, decide what to run, judge it.

`prepare(job, checks)` turns a job into a request for the jail (or an
immediate classified failure) *without executing anything*: the source is only
parsed (`ast`), and EVE's `args_list` is read with `ast.literal_eval` of its
literal, never `eval` (the published code evals it on the host). Static policy
from the published method applies: programs that use randomness or save files
are rejected.

`assemble(prepared, stream, status)` turns what came back (raw frames written
by the job, plus how its process ended) into a `JobResult`. It trusts nothing
the job said: every frame is parsed with limits, every shape is checked before
pixels are viewed, and validity is computed here from the pixels themselves.

The job-side half (running `edit_image`, rendering SVG, collecting a plot)
is `harness.py`.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import signal
from typing import Any

import numpy as np
from PIL import Image

from evejax.sandbox import checks as checks_lib
from evejax.sandbox import wire
from evejax.sandbox.jobs import EveJob, Job, JobResult, PlotJob, Reason, SvgJob
from evejax.sandbox.jobs import failure

MAX_SOURCE_CHARS = 200_000

# Names whose use marks a program as random (the published rule rejects
# `import random` and `random.`; this also catches numpy and os sources).
_RANDOM_MODULES = {"random", "secrets", "uuid"}
_RANDOM_ATTRS = {"random", "urandom", "default_rng", "RandomState",
                 "getrandom", "randbytes", "SystemRandom"}
# The published rule rejects `.save`; plotting and OpenCV spellings as well.
_SAVE_ATTRS = {"save", "savefig", "imsave", "imwrite", "tofile"}


@dataclasses.dataclass
class Prepared:
  """A job ready for the jail: the request header and its payload."""
  kind: str
  request: dict[str, Any]
  payload: bytes
  expect_images: int
  args: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  function_source: str = ""
  rotation: bool = False


# ------------------------------------------------------------------ inputs

def _source_text(source: str | bytes, kind: str) -> str | JobResult:
  if isinstance(source, bytes):
    try:
      source = source.decode("utf-8")
    except UnicodeDecodeError as e:
      return failure(Reason.SYNTAX_ERROR, f"source is not valid UTF-8: {e}",
                     kind)
  if not isinstance(source, str):
    raise TypeError(f"{kind} job source must be str or bytes, not "
                    f"{type(source).__name__}")
  try:
    source.encode("utf-8")
  except UnicodeEncodeError as e:
    return failure(Reason.SYNTAX_ERROR, f"source is not valid Unicode: {e}",
                   kind)
  if not source.strip():
    return failure(Reason.NO_CODE, "the source is empty", kind)
  if len(source) > MAX_SOURCE_CHARS:
    return failure(Reason.INVALID_PROGRAM, f"source has {len(source)} "
                   f"characters; the limit is {MAX_SOURCE_CHARS}", kind)
  return source


def _parse(source: str, kind: str) -> ast.Module | JobResult:
  try:
    return ast.parse(source, filename="<program>")
  except SyntaxError as e:
    return failure(Reason.SYNTAX_ERROR, f"line {e.lineno}: {e.msg}", kind)
  except (ValueError, RecursionError, MemoryError, OverflowError) as e:
    return failure(Reason.SYNTAX_ERROR, f"{type(e).__name__}: {e}", kind)


def source_image(image: Any, cfg: checks_lib.CheckConfig) -> np.ndarray:
  """A job's input image as a contiguous HxWx3 uint8 array.

  Raises:
    ValueError: naming the problem (caller error, not the program's).
  """
  if isinstance(image, (bytes, bytearray, memoryview)):
    try:
      return checks_lib.decode_image(bytes(image), cfg.max_decode_pixels)
    except checks_lib.ImageTooLarge as e:
      raise ValueError(f"EveJob.image: {e}; pass a smaller image or raise "
                       "CheckConfig.max_decode_pixels") from None
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"EveJob.image: the bytes are not a readable image "
                       f"({type(e).__name__}: {e})") from None
  if isinstance(image, Image.Image):
    w, h = image.size
    if w * h > cfg.max_decode_pixels:
      raise ValueError(f"EveJob.image: {w}x{h} is over max_decode_pixels="
                       f"{cfg.max_decode_pixels}")
    return checks_lib.to_rgb_array(image)
  if isinstance(image, np.ndarray):
    arr = image
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (
        arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
      raise ValueError(f"EveJob.image: expected a uint8 array HxW or HxWx3/4, "
                       f"got {arr.dtype} {arr.shape}")
    if arr.shape[0] * arr.shape[1] > cfg.max_decode_pixels:
      raise ValueError(f"EveJob.image: {arr.shape} is over max_decode_pixels")
    if arr.ndim == 2:
      arr = np.stack([arr] * 3, axis=-1)
    elif arr.shape[2] == 1:
      arr = np.concatenate([arr] * 3, axis=-1)
    elif arr.shape[2] == 4:
      arr = arr[..., :3]
    return np.ascontiguousarray(arr)
  raise ValueError(f"EveJob.image: expected a PIL image, a uint8 array or "
                   f"encoded bytes, got {type(image).__name__}")


# ------------------------------------------------------------------ EVE

def find_args_list(tree: ast.Module) -> ast.stmt | None:
  """The last module-level assignment to `args_list` (as the reference)."""
  found = None
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "args_list" for t in node.targets):
      found = node
    elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
          and node.target.id == "args_list" and node.value is not None):
      found = node
  return found


def policy_problem(tree: ast.Module, cfg: checks_lib.CheckConfig) -> str | None:
  """The published static rules: no randomness, no file saving."""
  for node in ast.walk(tree):
    if cfg.reject_randomness:
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.name.split(".")[0] in _RANDOM_MODULES or a.name.endswith(
              ".random"):
            return f"uses randomness (import {a.name}); outputs must be " \
                   "a function of the arguments"
      if isinstance(node, ast.ImportFrom):
        mod = node.module or ""
        names = {a.name for a in node.names}
        if mod.split(".")[0] in _RANDOM_MODULES or mod.endswith(".random") \
            or names & (_RANDOM_ATTRS | _RANDOM_MODULES):
          return f"uses randomness (from {mod} import ...); outputs must " \
                 "be a function of the arguments"
      if isinstance(node, ast.Attribute) and node.attr in _RANDOM_ATTRS:
        return f"uses randomness (.{node.attr}); outputs must be a " \
               "function of the arguments"
    if cfg.reject_file_saving:
      if isinstance(node, ast.Attribute) and node.attr in _SAVE_ATTRS:
        return f"saves files (.{node.attr}); edit_image must return the image"
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and node.func.id == "open"):
        mode = node.args[1] if len(node.args) > 1 else next(
            (k.value for k in node.keywords if k.arg == "mode"), None)
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str) \
            and set(mode.value) & set("wax+"):
          return "opens a file for writing; edit_image must return the image"
  return None


def prepare_eve(job: EveJob, cfg: checks_lib.CheckConfig) -> Prepared | JobResult:
  kind = "eve"
  source = _source_text(job.source, kind)
  if isinstance(source, JobResult):
    return source
  tree = _parse(source, kind)
  if isinstance(tree, JobResult):
    return tree
  if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
             and n.name == "edit_image" for n in tree.body):
    return failure(Reason.INVALID_PROGRAM, "no module-level function "
                   "edit_image(img, **params)", kind)
  node = find_args_list(tree)
  if node is None:
    return failure(Reason.INVALID_PROGRAM, "no module-level `args_list = "
                   "[...]` assignment", kind)
  try:
    value = ast.literal_eval(node.value)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
    return failure(Reason.INVALID_PROGRAM, "args_list must be a literal list "
                   f"of dicts (parsed without running code): {e}", kind)
  n = job.num_args
  if not isinstance(value, list) or not isinstance(node.value, ast.List):
    return failure(Reason.INVALID_PROGRAM, "args_list must be a list literal, "
                   f"got {type(value).__name__}", kind)
  if len(value) != n:
    return failure(Reason.INVALID_PROGRAM,
                   f"args_list has {len(value)} entries; exactly {n} are "
                   "required", kind)
  for k, d in enumerate(value):
    if not isinstance(d, dict) or not all(isinstance(key, str) for key in d):
      return failure(Reason.INVALID_PROGRAM, f"args_list[{k}] is not a dict "
                     "with string keys", kind)
  for j in range(n):
    for i in range(j):
      if value[i] == value[j]:
        return failure(Reason.INVALID_PROGRAM,
                       f"args_list[{i}] and args_list[{j}] are equal; the "
                       "dicts must be distinct", kind)
  lines = source.splitlines(True)
  function_source = "".join(lines[:node.lineno - 1]).strip()
  if len(function_source) >= cfg.max_function_chars:
    return failure(Reason.INVALID_PROGRAM,
                   f"the code before args_list has {len(function_source)} "
                   f"characters; it must be under {cfg.max_function_chars}",
                   kind, function_source=function_source)
  problem = policy_problem(tree, cfg)
  if problem:
    return failure(Reason.FORBIDDEN, problem, kind,
                   function_source=function_source)
  segments = [ast.get_source_segment(source, e) for e in node.value.elts]
  img = source_image(job.image, cfg)
  h, w = img.shape[:2]
  request = {"kind": kind, "source": source, "args": segments, "h": h, "w": w,
             "max_pixels": cfg.max_pixels,
             "max_decode_pixels": cfg.max_decode_pixels}
  return Prepared(kind, request, img.tobytes(), expect_images=n, args=value,
                  function_source=function_source,
                  rotation=cfg.rotation_marker in source)


# ------------------------------------------------------------------ SVG / plot

def prepare_svg(job: SvgJob, cfg: checks_lib.CheckConfig) -> Prepared | JobResult:
  kind = "svg"
  svg = _source_text(job.svg, kind)
  if isinstance(svg, JobResult):
    return svg
  if "<svg" not in svg:
    return failure(Reason.NO_CODE, "no <svg> element in the text", kind)
  request = {"kind": kind, "svg": svg, "background": job.background,
             "max_side": cfg.max_side, "max_aspect": cfg.max_aspect,
             "max_render_pixels": cfg.max_render_pixels,
             "max_decode_pixels": cfg.max_decode_pixels}
  return Prepared(kind, request, b"", expect_images=1)


def prepare_plot(job: PlotJob, cfg: checks_lib.CheckConfig) -> Prepared | JobResult:
  kind = "plot"
  source = _source_text(job.source, kind)
  if isinstance(source, JobResult):
    return source
  tree = _parse(source, kind)
  if isinstance(tree, JobResult):
    return tree
  request = {"kind": kind, "source": source,
             "max_render_pixels": cfg.max_render_pixels,
             "max_decode_pixels": cfg.max_decode_pixels}
  return Prepared(kind, request, b"", expect_images=1)


def prepare(job: Job, cfg: checks_lib.CheckConfig) -> Prepared | JobResult:
  """Static half of a job: a request for the jail, or a failure right away."""
  if isinstance(job, EveJob):
    return prepare_eve(job, cfg)
  if isinstance(job, SvgJob):
    return prepare_svg(job, cfg)
  if isinstance(job, PlotJob):
    return prepare_plot(job, cfg)
  raise TypeError(f"not a sandbox job: {type(job).__name__}; use EveJob, "
                  "SvgJob or PlotJob")


# ------------------------------------------------------------------ results

@dataclasses.dataclass
class ProcessStatus:
  """How the job's process ended, as the worker observed it."""
  exit_code: int | None = None
  signal: int | None = None
  timed_out: bool = False
  cpu_limited: bool = False
  stream_overflow: bool = False
  stdout: str = ""
  stderr: str = ""
  wall_s: float = 0.0
  cpu_s: float = 0.0
  max_rss_kb: int = 0
  note: str = ""


_CHILD_REASONS = {Reason.SYNTAX_ERROR, Reason.EXCEPTION, Reason.MEMORY,
                  Reason.INVALID_OUTPUT, Reason.INVALID_PROGRAM}


def _signal_name(sig: int) -> str:
  try:
    return signal.Signals(sig).name
  except ValueError:
    return f"signal {sig}"


def _decode_frames(prep: Prepared, frames, cfg: checks_lib.CheckConfig
                   ) -> tuple[list[np.ndarray], dict | None]:
  """Validates the job's frames; returns (images with alpha, end frame)."""
  limit = cfg.max_pixels if prep.kind == "eve" else cfg.max_render_pixels
  images: list[np.ndarray] = []
  end = None
  for header, payload in frames:
    if end is not None:
      raise wire.ProtocolError("frames after the end frame")
    t = header.get("t")
    if t == "image":
      i, h, w, c = (header.get(k) for k in ("i", "h", "w", "c"))
      if not all(isinstance(v, int) and not isinstance(v, bool)
                 for v in (i, h, w, c)):
        raise wire.ProtocolError("image frame with non-integer fields")
      if i != len(images):
        raise wire.ProtocolError(f"image frame {i} out of order")
      if i >= prep.expect_images:
        raise wire.ProtocolError(f"more than {prep.expect_images} images")
      if c not in (3, 4) or h < 1 or w < 1 or h * w > limit:
        raise wire.ProtocolError(f"image frame declares {w}x{h}x{c}; limit "
                                 f"{limit} pixels, 3 or 4 channels")
      if len(payload) != h * w * c:
        raise wire.ProtocolError(f"image frame has {len(payload)} bytes for "
                                 f"{w}x{h}x{c}")
      images.append(np.frombuffer(payload, np.uint8).reshape(h, w, c))
    elif t in ("done", "error"):
      end = header
    else:
      raise wire.ProtocolError(f"unknown frame type {t!r}")
  return images, end


def assemble(prep: Prepared, stream: bytes | bytearray | memoryview,
             status: ProcessStatus,
             cfg: checks_lib.CheckConfig) -> JobResult:
  """Judges one finished job from its raw output stream and exit status."""
  common = dict(kind=prep.kind, stdout=status.stdout, stderr=status.stderr,
                wall_s=status.wall_s, function_source=prep.function_source,
                args=prep.args,
                stats={"cpu_s": status.cpu_s, "max_rss_kb": status.max_rss_kb,
                       "exit_code": status.exit_code, "signal": status.signal})
  fail = lambda reason, detail: failure(reason, detail, **common)  # noqa: E731

  if status.timed_out:
    return fail(Reason.TIMEOUT, status.note or "wall-clock limit reached; "
                "the process group was killed")
  if status.stream_overflow:
    return fail(Reason.INVALID_OUTPUT, status.note or "the result stream "
                "exceeded its size limit; the job was killed")
  if status.signal is not None:
    sig = status.signal
    if sig == signal.SIGSYS:
      return fail(Reason.FORBIDDEN, "killed by SIGSYS: a forbidden system "
                  "call (network socket, new process, exec, ptrace, mount or "
                  "namespace)")
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and status.cpu_limited):
      return fail(Reason.TIMEOUT, "CPU-time limit reached "
                  f"({status.cpu_s:.1f} s of CPU)")
    return fail(Reason.CRASHED, f"killed by {_signal_name(sig)}")

  try:
    frames = wire.split_frames(stream, max_frames=prep.expect_images + 1)
    images, end = _decode_frames(prep, frames, cfg)
  except wire.ProtocolError as e:
    if status.exit_code:
      return fail(Reason.CRASHED, f"exited with status {status.exit_code}")
    return fail(Reason.INVALID_OUTPUT, f"malformed result stream: {e}")
  if end is None:
    return fail(Reason.CRASHED, f"exited with status {status.exit_code} "
                "before reporting a result")
  if end.get("t") == "error":
    reason = end.get("reason")
    detail = end.get("detail")
    if reason not in _CHILD_REASONS or not isinstance(detail, str):
      return fail(Reason.INVALID_OUTPUT, "malformed error frame")
    return fail(reason, detail)
  if status.exit_code != 0:
    return fail(Reason.CRASHED, f"exited with status {status.exit_code} "
                "after reporting")
  if len(images) != prep.expect_images:
    return fail(Reason.INVALID_OUTPUT, f"{len(images)} images for "
                f"{prep.expect_images} expected")

  if prep.kind == "eve":
    problem = checks_lib.outputs_problem(images, cfg, prep.rotation)
  else:
    # Renders: size and opacity only (a dark plot is a fine plot).
    problem = checks_lib.image_problem(images[0], dataclasses.replace(
        cfg, min_pixels=1, max_pixels=cfg.max_render_pixels,
        max_near_black_fraction=1.0))
  rgb = [np.ascontiguousarray(im[..., :3]) for im in images]
  if problem:
    out = fail(Reason.INVALID_OUTPUT, problem)
    out.images = rgb
    return out
  return JobResult(ok=True, reason=Reason.OK, images=rgb, **common)


def encode_png(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()
