"""Observability: metrics (JSONL + TensorBoard), progress, timers, HTML gallery.

Everything here is host-side and resume-aware: a run resumed from a checkpoint
at step s truncates metric records after s (they belong to the lost future of
the killed run) and its progress bar starts at s. Only process 0 writes.

Every file is written so that a full disk or an unwritable workdir is one
`storage.StorageError` naming the file and leaves no torn record or page:
JSONL records go out in one write each (cut back if it fails), pages are
renamed into place, and TensorBoard is refused before its writer thread
could die on a full disk (after which tensorboardX blocks forever).
"""
from __future__ import annotations

import base64
import collections
from collections.abc import Iterable, Iterator, Mapping
import contextlib
import html
import io
import json
import logging as std_logging
import math
import numbers
import os
import re
import sys
import threading
import time
from typing import Any

from absl import logging
from absl.logging import converter as absl_converter
import numpy as np
from PIL import Image
import tqdm

from evejax import storage

METRICS_FILE = "metrics.jsonl"
TEXT_FILE = "text.jsonl"


def _process_index() -> int:
  try:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_index()
  except Exception:  # noqa: BLE001 -- no backend: a single process.
    return 0


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """Records of a JSONL file; a torn last line (killed writer) is skipped."""
  records = []
  if not os.path.exists(path):
    return records
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def _truncate_jsonl(path: str, last_step: int, position: int | None = None) -> int:
  """Drops records written after a checkpoint (atomically); returns how many.

  A record carrying a 'position' (schedule units done when it was written) is
  dropped when that position is at or past `position`; other records when
  their step is past `last_step`.
  """
  if not os.path.exists(path):
    return 0
  records = read_jsonl(path)

  def after(r):
    if position is not None and "position" in r:
      return r["position"] >= position
    return r.get("step", -1) > last_step

  keep = [r for r in records if not after(r)]
  storage.write_atomic(path, "".join(json.dumps(r) + "\n" for r in keep), "metrics")
  return len(records) - len(keep)


def _to_number(name: str, v: Any) -> int | float:
  if isinstance(v, (bool, np.bool_)):
    return int(v)
  if isinstance(v, numbers.Integral):
    return int(v)
  if isinstance(v, numbers.Real):
    return float(v)
  arr = np.asarray(v)
  if arr.size != 1 or not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
    raise ValueError(f"Metric {name!r} must be a scalar number, got "
                     f"{type(v).__name__} of shape {arr.shape}; log arrays as images/text.")
  x = arr.reshape(()).item()
  return int(x) if isinstance(x, (bool, int)) else float(x)


def to_uint8_image(img: Any) -> np.ndarray:
  """HxWx3 (or HxWx4) uint8 from a PIL image or an array (uint8, or float in [0, 1])."""
  if isinstance(img, Image.Image):
    img = np.asarray(img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB"))
  arr = np.asarray(img)
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, axis=-1)
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
    raise ValueError(f"Image must be HxW, HxWx1, HxWx3 or HxWx4; got shape {arr.shape}.")
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  if arr.dtype != np.uint8:
    if np.issubdtype(arr.dtype, np.floating):
      arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
  return arr


class MetricsWriter:
  """Scalars to `<workdir>/metrics.jsonl` and TensorBoard; images and text too.

  Each `scalars` call appends one JSON object {"step", "time", name: value...}
  and flushes it, so a killed run loses nothing it logged. When resuming, pass
  `resume_step` (the metrics step restored) and, for writers that log a
  `position` with each record (schedule units done, as the recipe runner does),
  `resume_position`: records written after the checkpoint are dropped from the
  JSONL files and TensorBoard purges its events after `resume_step`.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, jsonl: bool = True,
               resume_step: int | None = None, resume_position: int | None = None):
    self.workdir = workdir
    self._active = _process_index() == 0
    self._jsonl = self._text = self._tb = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    if jsonl:
      paths = [os.path.join(workdir, METRICS_FILE), os.path.join(workdir, TEXT_FILE)]
      for p in paths:
        if storage.drop_torn_tail(p):
          logging.warning("Dropped a torn last record (a killed write) from %s", p)
      if resume_step is not None:
        for p in paths:
          dropped = _truncate_jsonl(p, resume_step, resume_position)
          if dropped:
            logging.info("Dropped %d records after step %d from %s", dropped, resume_step, p)
      # Unbuffered: every record reaches the OS, whole, as soon as it is written.
      self._jsonl, self._text = _JsonlFile(paths[0]), _JsonlFile(paths[1])
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(
          logdir=os.path.join(workdir, "tb"),
          purge_step=None if resume_step is None else resume_step + 1,
          flush_secs=30)

  @staticmethod
  def _name(name: str, prefix: str | None) -> str:
    return f"{prefix}/{name}" if prefix else name

  def scalars(self, step: int, metrics: Mapping[str, Any], prefix: str | None = None,
              position: int | None = None) -> None:
    """One record at `step`; `position` marks where in a run it was written."""
    if not self._active:
      return
    values = {self._name(k, prefix): _to_number(k, v) for k, v in metrics.items()}
    if self._jsonl is not None:
      head = {"step": int(step), "time": time.time()}
      if position is not None:
        head["position"] = int(position)
      self._jsonl.write({**head, **values})
    if self._tb is not None:
      self._check_tensorboard()
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))

  def images(self, step: int, images: Mapping[str, Any], prefix: str | None = None) -> None:
    """Logs name -> image (uint8 HxWx3, or anything `to_uint8_image` takes)."""
    if not self._active or self._tb is None:
      return
    self._check_tensorboard()
    for k, img in images.items():
      self._tb.add_image(self._name(k, prefix), to_uint8_image(img)[..., :3], int(step),
                         dataformats="HWC")

  def text(self, step: int, texts: Mapping[str, str], prefix: str | None = None) -> None:
    if not self._active:
      return
    texts = {self._name(k, prefix): str(v) for k, v in texts.items()}
    if self._text is not None:
      self._text.write({"step": int(step), "time": time.time(), **texts})
    if self._tb is not None:
      self._check_tensorboard()
      for k, v in texts.items():
        self._tb.add_text(k, v, int(step))

  def _check_tensorboard(self) -> None:
    """Refuses to queue events where they cannot be written.

    tensorboardX writes from a thread that dies on its first failed write;
    its bounded queue then blocks the next `add_*` forever. Checked before
    each record: enough free space for it, and a living writer thread.
    """
    logdir = os.path.join(self.workdir, "tb")
    storage.check_free(logdir, 4096, "TensorBoard events")
    writer = getattr(getattr(self._tb, "file_writer", None), "event_writer", None)
    thread = getattr(writer, "_worker", None)
    if thread is not None and not thread.is_alive():
      raise storage.StorageError(
          f"cannot write TensorBoard events to {logdir}: its writer thread stopped on a "
          f"failed write ({storage.human(storage.free_bytes(logdir))} free). Fix: free space "
          "there or make it writable (or set config.log.tensorboard=False), then run the "
          "same command again to resume from the last checkpoint.", logdir)

  def flush(self) -> None:
    for f in (self._jsonl, self._text):
      if f is not None:
        f.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if not self._active:
      return
    self.flush()
    for f in (self._jsonl, self._text):
      if f is not None:
        f.close()
    if self._tb is not None:
      self._tb.close()
    self._jsonl = self._text = self._tb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _JsonlFile:
  """An append-only JSONL file: each record reaches the OS in one write, whole or not
  at all (`storage.append`)."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
      raise (storage.from_error(e, path, os.path.basename(path)) or e) from None

  def write(self, record: Mapping[str, Any]) -> None:
    storage.append(self._fd, (json.dumps(record) + "\n").encode(), self.path,
                   f"a record of {os.path.basename(self.path)}")

  def flush(self) -> None:
    os.fsync(self._fd)

  def close(self) -> None:
    os.close(self._fd)


class Progress:
  """A tqdm bar that resumes at `initial` and also logs a line periodically.

  The bar is drawn only on a TTY (or with `force=True`); the periodic log line
  (position, rate, ETA) is written through absl logging either way, so batch
  jobs' logs show progress too.
  """

  def __init__(self, iterable_or_total: Iterable[Any] | int, desc: str = "",
               initial: int = 0, *, total: int | None = None, force: bool = False,
               log_every_s: float = 60.0, clock=time.monotonic, file: Any = None):
    if isinstance(iterable_or_total, numbers.Integral):
      total = int(iterable_or_total) if total is None else total
      self._iterable = range(initial, total)
    else:
      self._iterable = iterable_or_total
      if total is None and hasattr(iterable_or_total, "__len__"):
        # The iterable holds what is left; `initial` items are already done.
        total = initial + len(iterable_or_total)
    self.desc, self.total, self.initial, self.n = desc, total, initial, initial
    self._clock, self._log_every_s = clock, log_every_s
    self._start = self._last_log = clock()
    enabled = force or (sys.stderr.isatty() and _process_index() == 0)
    self._bar = tqdm.tqdm(total=total, desc=desc, initial=initial, disable=not enabled,
                          dynamic_ncols=True, smoothing=0.1, file=file)

  def __iter__(self) -> Iterator[Any]:
    for item in self._iterable:
      yield item
      self.update(1)
    self.close()

  def update(self, n: int = 1) -> None:
    self.n += n
    self._bar.update(n)
    now = self._clock()
    if now - self._last_log >= self._log_every_s:
      self._last_log = now
      logging.info("%s", self.status_line())

  def set_postfix(self, **kw: Any) -> None:
    self._bar.set_postfix(**kw)

  def status_line(self) -> str:
    """'desc: 120/1000 (12.0%) 2.50 it/s, elapsed 48s, ETA 5:52'."""
    elapsed = max(self._clock() - self._start, 1e-9)
    done = self.n - self.initial
    rate = done / elapsed
    parts = [f"{self.desc}: {self.n}"]
    if self.total:
      parts[0] += f"/{self.total} ({100.0 * self.n / self.total:.1f}%)"
    parts.append(f"{rate:.2f} it/s")
    parts.append(f"elapsed {tqdm.tqdm.format_interval(elapsed)}")
    if self.total and rate > 0:
      parts.append(f"ETA {tqdm.tqdm.format_interval((self.total - self.n) / rate)}")
    return ", ".join(parts)

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress(iterable_or_total: Iterable[Any] | int, desc: str = "", initial: int = 0,
             **kw: Any) -> Progress:
  """`for step in progress(total_steps, "train", initial=restored_step): ...`

  An int yields range(initial, total); an iterable yields its items and counts
  `initial` as already done (pass the remaining items).
  """
  return Progress(iterable_or_total, desc, initial, **kw)


class Timer:
  """Accumulates wall time per named section.

    timer = Timer()
    with timer("sampling"):
      out = sample(...); jax.block_until_ready(out)   # time device work, not dispatch
    print(timer.line())   # 'wall 10.0s | sampling 6.00s 60% | other 4.00s 40%'

  Sections may be timed from several threads (e.g. the sandbox pool); they
  then overlap and their percentages of wall time can add up to over 100%.
  """

  def __init__(self, clock=time.perf_counter):
    self._clock = clock
    self._lock = threading.Lock()
    self.reset()

  def reset(self) -> dict[str, float]:
    """Restarts the clock and the sums; returns the summary before the reset."""
    with self._lock:
      before = dict(getattr(self, "_totals", {}))
      self._totals: dict[str, float] = collections.OrderedDict()
      self._counts: dict[str, int] = collections.Counter()
      self._start = self._clock()
    return before

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[None]:
    t0 = self._clock()
    try:
      yield
    finally:
      self.add(name, self._clock() - t0)

  def add(self, name: str, seconds: float) -> None:
    with self._lock:
      self._totals[name] = self._totals.get(name, 0.0) + seconds
      self._counts[name] += 1

  def elapsed(self) -> float:
    return self._clock() - self._start

  def summary(self) -> dict[str, float]:
    """Section name -> accumulated seconds, in first-seen order."""
    with self._lock:
      return dict(self._totals)

  def counts(self) -> dict[str, int]:
    with self._lock:
      return dict(self._counts)

  def fractions(self) -> dict[str, float]:
    """Section name -> share of wall time since the last reset."""
    wall = max(self.elapsed(), 1e-12)
    return {k: v / wall for k, v in self.summary().items()}

  def line(self) -> str:
    wall = self.elapsed()
    totals = self.summary()
    parts = [f"wall {wall:.1f}s"]
    for k, v in totals.items():
      parts.append(f"{k} {v:.2f}s {100.0 * v / max(wall, 1e-12):.0f}%")
    other = wall - sum(totals.values())
    if totals and other > 0:
      parts.append(f"other {other:.2f}s {100.0 * other / max(wall, 1e-12):.0f}%")
    return " | ".join(parts)

  __str__ = line


_CODE_KEYS = ("program", "source", "code", "svg")
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:1em;margin:0 0 1.2em}
.card h2{font-size:1.05em;margin:0 0 .6em}
.strip{display:flex;flex-wrap:wrap;gap:.6em;margin:.4em 0}
figure{margin:0;text-align:center}
figure img{max-height:256px;border:1px solid #ccc;image-rendering:pixelated}
figcaption{font-size:.8em;color:#555}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1em;margin:.4em 0}
dt{font-weight:600;color:#444}
dd{margin:0}
pre{background:#f4f4f4;padding:.5em;overflow-x:auto;margin:0;white-space:pre-wrap}
ol{margin:0;padding-left:1.5em}
"""


def _is_image(v: Any) -> bool:
  if isinstance(v, Image.Image):
    return True
  return (isinstance(v, np.ndarray) and v.ndim in (2, 3) and min(v.shape[:2]) > 1
          and (v.ndim == 2 or v.shape[-1] in (1, 3, 4)))


class Gallery:
  """A list of cards (image strips + labelled fields) written as one HTML file.

  `add(task)` takes a dict. `images` (an image, a list of images, or a dict
  caption -> image) becomes the card's image strip; `title` its heading; every
  other field is shown labelled: code-like fields (`program`, `source`, `code`)
  and multi-line strings in <pre>, lists as numbered lists, dicts as nested
  fields, images wherever they appear. All text is HTML-escaped; images are
  embedded as base64 PNG, so the file opens in a browser with no server.

  With `cards_dir`, every card is also kept as `<cards_dir>/<key>.html` and the
  cards found there are loaded at construction, so a run that resumes in the
  middle of a phase keeps the cards it made before it stopped (a step that is
  re-run re-renders its cards under the same keys).
  """

  def __init__(self, directory: str | None = None, *, title: str = "evejax gallery",
               max_image_side: int | None = 512, max_cards: int | None = None,
               cards_dir: str | None = None):
    self.directory = directory
    self.title = title
    self.max_image_side = max_image_side
    self.max_cards = max_cards
    self.cards_dir = cards_dir
    self._cards: dict[str, str] = {}
    if cards_dir and os.path.isdir(cards_dir):
      for name in sorted(os.listdir(cards_dir)):
        if name.endswith(".html"):
          with open(os.path.join(cards_dir, name), encoding="utf-8") as f:
            self._cards[name[:-len(".html")]] = f.read()

  def __len__(self) -> int:
    return len(self._cards)

  def _img_tag(self, img: Any, caption: str | None = None) -> str:
    pil = Image.fromarray(to_uint8_image(img))
    if self.max_image_side and max(pil.size) > self.max_image_side:
      pil.thumbnail((self.max_image_side, self.max_image_side))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="">{cap}</figure>'

  def _strip(self, images: Any) -> str:
    if isinstance(images, Mapping):
      items = [(str(k), v) for k, v in images.items()]
    elif _is_image(images):
      items = [(None, images)]
    else:
      items = [(None, v) for v in images]
    return '<div class="strip">' + "".join(self._img_tag(v, c) for c, v in items) + "</div>"

  def _value(self, key: str, v: Any) -> str:
    if _is_image(v):
      return self._strip([v])
    if isinstance(v, Mapping):
      return "<dl>" + "".join(f"<dt>{html.escape(str(k))}</dt><dd>{self._value(str(k), x)}</dd>"
                              for k, x in v.items()) + "</dl>"
    if isinstance(v, (list, tuple)) and v and all(_is_image(x) for x in v):
      return self._strip(v)
    if isinstance(v, (list, tuple)):
      if all(isinstance(x, (numbers.Number, np.number)) for x in v):
        return html.escape(", ".join(_fmt(x) for x in v))
      return "<ol>" + "".join(f"<li>{self._value(key, x)}</li>" for x in v) + "</ol>"
    if isinstance(v, (numbers.Number, np.number)):
      return html.escape(_fmt(v))
    s = str(v)
    if "\n" in s or any(c in key.lower() for c in _CODE_KEYS):
      return f"<pre>{html.escape(s)}</pre>"
    return html.escape(s)

  def has_room(self, key: str) -> bool:
    """Whether `add(..., key=key)` would keep the card (check before building it)."""
    return key in self._cards or self.max_cards is None or len(self._cards) < self.max_cards

  def add(self, task: Mapping[str, Any], key: str | None = None) -> None:
    """Renders one task to a card now (later changes to `task` do not show).

    Cards are shown in the order of their keys (default: the order added); a
    key already present is replaced.
    """
    key = f"{len(self._cards):06d}" if key is None else str(key)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
      raise ValueError(f"Gallery card key {key!r}: use letters, digits, '_', '.', '-'.")
    if not self.has_room(key):
      return
    parts = ['<div class="card">']
    title = task.get("title")
    if title is not None:
      parts.append(f"<h2>{html.escape(str(title))}</h2>")
    if task.get("images") is not None:
      parts.append(self._strip(task["images"]))
    fields = [(k, v) for k, v in task.items() if k not in ("title", "images")]
    if fields:
      parts.append("<dl>")
      for k, v in fields:
        parts.append(f"<dt>{html.escape(str(k))}</dt><dd>{self._value(str(k), v)}</dd>")
      parts.append("</dl>")
    parts.append("</div>")
    self._cards[key] = card = "".join(parts)
    if self.cards_dir:
      storage.write_atomic(os.path.join(self.cards_dir, key + ".html"), card, "a gallery card")

  def html(self) -> str:
    title = html.escape(self.title)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_CSS}</style></head><body><h1>{title}</h1>"
            f"<p>{len(self._cards)} cards</p>\n"
            + "\n".join(self._cards[k] for k in sorted(self._cards)) + "\n</body></html>\n")

  def write(self, path: str | None = None) -> str:
    """Writes the page (atomically) to `path` or `<directory>/gallery.html`."""
    if path is None:
      if self.directory is None:
        raise ValueError("Gallery.write needs a path (no directory was given).")
      path = os.path.join(self.directory, "gallery.html")
    storage.write_atomic(path, self.html(), "the gallery page")
    return path


def _fmt(x: Any) -> str:
  if isinstance(x, (bool, np.bool_)):
    return str(bool(x))
  if isinstance(x, numbers.Integral):
    return str(int(x))
  x = float(x)
  return repr(x) if not math.isfinite(x) else f"{x:.4g}"


def setup_logging(workdir: str, *, level: int = logging.INFO) -> str:
  """Sends absl (and Python) logging to `<workdir>/log.txt` as well as stderr.

  `level` is an absl level (logging.INFO, logging.DEBUG, ...).

  Idempotent; other processes of a multi-host job write `log.p<N>.txt`.
  Returns the log file path.
  """
  os.makedirs(workdir, exist_ok=True)
  index = _process_index()
  path = os.path.abspath(os.path.join(workdir, "log.txt" if index == 0 else f"log.p{index}.txt"))
  logging.set_verbosity(level)
  root = std_logging.getLogger()
  for h in root.handlers:
    if isinstance(h, std_logging.FileHandler) and h.baseFilename == path:
      return path
  handler = std_logging.FileHandler(path, mode="a", encoding="utf-8")
  handler.setFormatter(logging.PythonFormatter())
  handler.setLevel(absl_converter.absl_to_standard(level))
  root.addHandler(handler)
  return path
