"""Benchmark files -> `Item`s: VLMEvalKit TSV, HF `datasets` on disk, JSONL + images.

Nothing is downloaded. `locate` finds a benchmark's file under a data
directory (or fails with one message saying where it is expected and in which
format); `read` picks the reader from what it finds:

  NAME.tsv          VLMEvalKit: tab-separated with a header. `image` holds a
                    base64 JPEG/PNG, a Python-list literal of them, or (at most
                    64 characters) the `index` of a row whose image is reused;
                    or `image_path` names files next to the TSV. Options are
                    the columns A..J (empty or "nan" = absent); optional
                    `hint`, `category`, `l2-category`, `split`.
  NAME/ or .parquet a dataset saved by HF `datasets`: `save_to_disk` (state.json
                    + arrow files; a DatasetDict picks `split`) or parquet
                    files (one file, a folder, or `data/<split>-*.parquet`).
                    Image columns are `datasets.Image` structs {bytes, path}.
                    Read with pyarrow; `datasets` itself is not needed.
  NAME.jsonl        one JSON object per line, images as file paths relative to
                    `image_dir` (default: the file's folder).

Every format goes through one row normaliser (`item_from_row`), which knows
the column names of the sources the papers used (VLMEvalKit, lmms-lab,
AI4Math/MathVista, MMMU, zli12321): `index|id|pid` for the id, `question` or
`problem` (and MathVista's full `query`), `image|images|decoded_image|image_1..`,
option columns A..J or an `options`/`choices` list, `answer` (a letter, an
option text, or with `answer_index` an option's index as lmms-lab/ai2d
stores it), `answer_option`, `question_type`/`answer_type`, `precision`,
`unit`, category columns.

A row that cannot become an item is a `Skipped` with a counted reason, never
an exception: `missing_column` (no question or answer), `no_image` (VLMEvalKit
drops such rows; MM-Zero's denominator is the rows with an image),
`undecodable_image` (base64 that does not decode; bytes PIL cannot read are
found when the prompt is built), `malformed_row` (a JSONL line that is not an
object).
"""
from __future__ import annotations

import ast
import base64
import binascii
import csv
import dataclasses
import glob
import json
import os
import sys
from typing import Any, Callable, Iterable, Sequence

from evejax.eval.records import ImageRef, Item, OPTION_LETTERS, Skipped

FORMATS = ("tsv", "hf", "jsonl")

ID_KEYS = ("index", "id", "pid", "question_id", "sample_id")
QUESTION_KEYS = ("question", "problem")
IMAGE_KEYS = ("decoded_image", "image", "images")
SUBCATEGORY_KEYS = ("l2-category", "l2_category")
# Columns turned into Item fields; the rest go to Item.extra when small.
_KNOWN = set(ID_KEYS + QUESTION_KEYS + IMAGE_KEYS + SUBCATEGORY_KEYS) | set(OPTION_LETTERS) | {
    "answer", "answer_option", "options", "choices", "hint", "question_type",
    "answer_type", "precision", "unit", "split", "image_path"}
_EXTRA_MAX_CHARS = 2000
# A TSV `image` this short is the index of the row whose image it reuses.
_IMAGE_REF_MAX_CHARS = 64


class DataError(ValueError):
  """A benchmark file that is missing or not in a readable format."""


@dataclasses.dataclass
class Loaded:
  """What a reader found: items, skipped rows, and where."""
  items: list[Item]
  skipped: list[Skipped]
  format: str
  path: str


class _BadImage(Exception):
  """An image field that cannot be turned into image bytes or a path."""


def locate(data_dir: str, stems: Sequence[str], path: str = "") -> str:
  """The benchmark file: `path` if given, else the first `data_dir/STEM{.tsv,...}`."""
  if path:
    if not os.path.exists(path):
      raise DataError(f"Benchmark file {path!r} does not exist; " + _FORMAT_HELP)
    return path
  tried = []
  for stem in stems:
    for candidate in (f"{stem}.tsv", f"{stem}.jsonl", f"{stem}.parquet", stem):
      full = os.path.join(data_dir, candidate)
      tried.append(full)
      if os.path.exists(full):
        return full
  raise DataError(
      f"No file for this benchmark under eval.data_dir={data_dir!r}; expected one of "
      f"{', '.join(tried)}. " + _FORMAT_HELP)


_FORMAT_HELP = (
    "Formats: a VLMEvalKit TSV (base64 images), a folder or .parquet saved by HF "
    "`datasets` (save_to_disk or to_parquet), or a .jsonl with image paths relative "
    "to it. Nothing is downloaded: copy the file there, or set eval.path to it.")


def read(path: str, *, split: str = "", answer_index: bool = False,
         category_keys: Sequence[str] = ("category",), image_dir: str = "") -> Loaded:
  """Reads one benchmark file (format from its name) into items and skipped rows.

  Args:
    path: a .tsv, .jsonl, .parquet file or a `datasets` folder.
    split: for a DatasetDict or parquet files per split; also keeps only the
      rows whose `split` column equals it when some row has that value.
    answer_index: an integer answer is an index into the options (lmms-lab ai2d).
    category_keys: columns tried in order for `Item.category`.
    image_dir: JSONL image paths are relative to this (default: the file's folder).
  """
  normalise = lambda row, n, images: item_from_row(
      row, n, images, answer_index=answer_index, category_keys=category_keys)
  if path.endswith(".tsv"):
    loaded = _read_tsv(path, normalise)
  elif path.endswith(".jsonl"):
    loaded = _read_jsonl(path, normalise, image_dir or os.path.dirname(path))
  elif path.endswith(".parquet") or os.path.isdir(path):
    loaded = _read_hf(path, normalise, split)
  else:
    raise DataError(f"Cannot tell the format of {path!r} from its name. " + _FORMAT_HELP)
  if split and any(it.split == split for it in loaded.items):
    # e.g. MMMU_DEV_VAL.tsv holds dev and validation rows.
    loaded.items = [it for it in loaded.items if it.split == split]
  return loaded


# ----------------------------------------------------------------- normaliser
def _missing(v: Any) -> bool:
  if v is None:
    return True
  if isinstance(v, float) and v != v:  # NaN
    return True
  return isinstance(v, str) and v.strip() in ("", "nan", "NaN")


def _first(row: dict, keys: Iterable[str]) -> Any:
  for k in keys:
    if k in row and not _missing(row[k]):
      return row[k]
  return None


def _as_list(v: Any) -> list:
  """A list from a list, a tuple, or a Python/JSON list literal in a string."""
  if isinstance(v, (list, tuple)):
    return list(v)
  if isinstance(v, str) and v.strip().startswith("["):
    try:
      out = ast.literal_eval(v.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
      return [v]
    return list(out) if isinstance(out, (list, tuple)) else [v]
  return [v]


def _options(row: dict) -> dict[str, str]:
  letters = {k: str(row[k]).strip() for k in OPTION_LETTERS if k in row and not _missing(row[k])}
  if letters:
    return letters
  raw = _first(row, ("options", "choices"))
  if raw is None:
    return {}
  if isinstance(raw, dict):
    return {str(k).strip(): str(v).strip() for k, v in raw.items() if not _missing(v)}
  texts = [str(x).strip() for x in _as_list(raw) if not _missing(x)]
  return dict(zip(OPTION_LETTERS, texts))


def _answer_letter(answer: str, options: dict[str, str], row: dict, answer_index: bool) -> str:
  """The gold as an option letter when it names one, else unchanged."""
  option = row.get("answer_option")
  if isinstance(option, str) and option.strip() in options:
    return option.strip()
  if answer in options:
    return answer
  if answer_index and answer.lstrip("-").isdigit() and 0 <= int(answer) < len(options):
    return list(options)[int(answer)]
  by_text = [k for k, v in options.items() if v == answer]
  return by_text[0] if len(by_text) == 1 else answer


def _answer_type(row: dict, options: dict[str, str]) -> str:
  qtype = str(row.get("question_type") or "").lower()
  atype = str(row.get("answer_type") or "").lower()
  if qtype in ("multi_choice", "multiple-choice", "multiple_choice", "mcq"):
    return "mcq"
  if qtype == "open":
    return "open"
  kinds = {"integer": "int", "int": "int", "float": "float", "text": "text",
           "list": "list", "yesno": "yesno", "mcq": "mcq", "open": "open"}
  return kinds.get(atype, "mcq" if options else "")


def _precision(v: Any) -> int | None:
  try:
    return None if _missing(v) else int(float(v))
  except (TypeError, ValueError):
    return None


def _extra(row: dict) -> dict[str, Any]:
  out = {}
  for k, v in row.items():
    if k in _KNOWN or _missing(v) or k.startswith("image_"):
      continue
    if isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= _EXTRA_MAX_CHARS):
      out[k] = v
  return out


def item_from_row(row: dict, n: int, images: Callable[[dict], list[ImageRef]], *,
                  answer_index: bool = False,
                  category_keys: Sequence[str] = ("category",)) -> Item | Skipped:
  """One source row -> an Item, or a Skipped with its reason.

  Args:
    row: column name -> value.
    n: the row's position (names rows without an id column).
    images: the format's image resolver (row -> encoded images); raises
      _BadImage for a field that cannot be decoded.
    answer_index, category_keys: see `read`.
  """
  item_id = _first(row, ID_KEYS)
  item_id = f"row{n}" if item_id is None else str(item_id)
  question = _first(row, QUESTION_KEYS)
  query = row.get("query")
  if question is None and not _missing(query):
    question = query
  answer = _first(row, ("answer",))
  if question is None or answer is None:
    which = "question" if question is None else "answer"
    return Skipped(item_id, "missing_column", f"no {which} (columns: {sorted(row)[:20]})")
  try:
    found = images(row)
  except _BadImage as e:
    return Skipped(item_id, "undecodable_image", str(e))
  if not found:
    return Skipped(item_id, "no_image", "the row has no image")
  options = _options(row)
  gold = _answer_letter(str(answer).strip(), options, row, answer_index)
  extra = _extra(row)
  if not _missing(query) and question != query:
    extra["query"] = str(query)
  return Item(
      id=item_id, question=str(question), answer=gold, images=found, options=options,
      hint="" if _missing(row.get("hint")) else str(row["hint"]),
      answer_type=_answer_type(row, options), precision=_precision(row.get("precision")),
      unit="" if _missing(row.get("unit")) else str(row["unit"]),
      category=str(_first(row, category_keys) or ""),
      subcategory=str(_first(row, SUBCATEGORY_KEYS) or ""),
      split="" if _missing(row.get("split")) else str(row["split"]),
      extra=extra)


def _field_images(row: dict, decode: Callable[[Any], ImageRef]) -> list[ImageRef]:
  """Images of a row: the first image column present, then image_1..image_N."""
  value = _first(row, IMAGE_KEYS)
  refs = [] if value is None else [decode(v) for v in _as_list(value) if not _missing(v)]
  numbered = sorted((k for k in row if k.startswith("image_") and k[6:].isdigit()),
                    key=lambda k: int(k[6:]))
  refs += [decode(row[k]) for k in numbered if not _missing(row[k])]
  if not refs and not _missing(row.get("image_path")):
    refs = [decode(v) for v in _as_list(row["image_path"])]
  return refs


# ------------------------------------------------------------------------ TSV
def _b64(text: str) -> bytes:
  try:
    return base64.b64decode(text, validate=False)
  except (binascii.Error, ValueError) as e:
    raise _BadImage(f"image is not valid base64 ({e})") from None


def _read_tsv(path: str, normalise) -> Loaded:
  csv.field_size_limit(sys.maxsize)
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  base = os.path.dirname(path)
  by_index = {str(r.get("index")): r.get("image") for r in rows
              if not _missing(r.get("image")) and len(r["image"]) > _IMAGE_REF_MAX_CHARS}

  def images(row: dict) -> list[ImageRef]:
    value = row.get("image")
    if not _missing(value):
      if len(value) <= _IMAGE_REF_MAX_CHARS:
        if value not in by_index:
          raise _BadImage(f"image refers to row index {value!r}, which has no image")
        value = by_index[value]
      return [_b64(v) for v in _as_list(value)]
    if not _missing(row.get("image_path")):
      return [os.path.join(base, str(p)) for p in _as_list(row["image_path"])]
    return []

  items, skipped = _normalise_all(rows, normalise, images)
  return Loaded(items, skipped, "tsv", path)


def _normalise_all(rows: Iterable[dict], normalise, images) -> tuple[list[Item], list[Skipped]]:
  items, skipped = [], []
  for n, row in enumerate(rows):
    out = normalise(row, n, images)
    (items if isinstance(out, Item) else skipped).append(out)
  return items, skipped


# ---------------------------------------------------------------------- JSONL
def _read_jsonl(path: str, normalise, image_dir: str) -> Loaded:
  def decode(v: Any) -> ImageRef:
    if isinstance(v, dict):
      v = v.get("path") or v.get("image")
    if not isinstance(v, str):
      raise _BadImage(f"image entry {v!r} is not a file path")
    return v if os.path.isabs(v) else os.path.join(image_dir, v)

  rows, skipped = [], []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        skipped.append(Skipped(f"line{n + 1}", "malformed_row", f"not JSON: {e}"))
        continue
      if not isinstance(row, dict):
        skipped.append(Skipped(f"line{n + 1}", "malformed_row", "not a JSON object"))
        continue
      rows.append(row)
  items, more = _normalise_all(rows, normalise, lambda r: _field_images(r, decode))
  return Loaded(items, skipped + more, "jsonl", path)


# ------------------------------------------------------------- HF datasets
def _pyarrow():
  try:
    import pyarrow  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise DataError("Reading a saved HF dataset or parquet file needs pyarrow: "
                    "pip install pyarrow (or datasets).") from None
  return pyarrow


def _arrow_table(pa, file: str):
  try:
    with pa.memory_map(file) as source:
      return pa.ipc.open_stream(source).read_all()
  except pa.ArrowInvalid:
    with pa.memory_map(file) as source:
      return pa.ipc.open_file(source).read_all()


def _hf_tables(path: str, split: str) -> tuple[list, str]:
  """Arrow tables of the dataset at `path` and the folder image paths are relative to."""
  pa = _pyarrow()
  if os.path.isfile(path):
    return [pa.parquet.read_table(path)], os.path.dirname(path)
  if os.path.exists(os.path.join(path, "dataset_dict.json")):
    with open(os.path.join(path, "dataset_dict.json")) as f:
      splits = json.load(f).get("splits", [])
    if not split and len(splits) == 1:
      split = splits[0]
    if split not in splits:
      raise DataError(f"{path} is a DatasetDict with splits {splits}; set eval.split "
                      "to one of them.")
    return _hf_tables(os.path.join(path, split), "")
  if os.path.exists(os.path.join(path, "state.json")):
    with open(os.path.join(path, "state.json")) as f:
      files = [d["filename"] for d in json.load(f).get("_data_files", [])]
    return [_arrow_table(pa, os.path.join(path, name)) for name in files], path
  parquet = sorted(glob.glob(os.path.join(path, "*.parquet")) +
                   glob.glob(os.path.join(path, "data", "*.parquet")))
  if split:
    named = [p for p in parquet if os.path.basename(p).startswith(f"{split}-")
             or os.path.basename(p) == f"{split}.parquet"]
    parquet = named or parquet
  if not parquet:
    raise DataError(f"{path} is a folder with neither a saved dataset (state.json, "
                    "dataset_dict.json) nor parquet files. " + _FORMAT_HELP)
  return [pa.parquet.read_table(p) for p in parquet], path


def _read_hf(path: str, normalise, split: str) -> Loaded:
  tables, base = _hf_tables(path, split)

  def decode(v: Any) -> ImageRef:
    if isinstance(v, dict):
      if v.get("bytes"):
        return bytes(v["bytes"])
      v = v.get("path")
    if isinstance(v, (bytes, bytearray)):
      return bytes(v)
    if isinstance(v, str) and v:
      return v if os.path.isabs(v) else os.path.join(base, v)
    raise _BadImage(f"image entry of type {type(v).__name__} has neither bytes nor a path")

  items, skipped, n = [], [], 0
  for table in tables:
    for batch in table.to_batches(max_chunksize=256):
      for row in batch.to_pylist():
        out = normalise(row, n, lambda r: _field_images(r, decode))
        (items if isinstance(out, Item) else skipped).append(out)
        n += 1
  return Loaded(items, skipped, "hf", path)
