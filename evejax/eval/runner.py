"""Scores a model on benchmark files, chunk by chunk, with resume and reports.

`evaluate_benchmark` runs one benchmark into `OUT/<benchmark>/`:

  results.jsonl   one row per item (evaluator.py lists the fields), appended
                  chunk by chunk and flushed, so a killed run keeps what it did
  summary.json    benchmarks.summarise + the profile as used, the model, the
                  data file, counts of skipped rows by reason, items/s
  summary.md      the same as a markdown table, per category
  run.json        what was evaluated (benchmark, profile, sampling, model, data);
                  a resumed run must match it

Items are cut into fixed chunks (`eval.chunk_size`) of the file's order. A
chunk whose items all have rows is skipped on resume; any other chunk is
sampled again whole with the seed of its position, and only its missing rows
are written: a resumed run writes the rows an uninterrupted one would have
(and, with greedy profiles, the same replies whatever the chunking).

While the device samples chunk i, a host thread builds chunk i+1's prompts
(image decoding and patchifying), so the device does not wait for the host.
Rows that never reach the sampler (unreadable rows from the reader, failed
prompts) are written with their reason and score 0 (see benchmarks.py for the
denominator).
"""
from __future__ import annotations

from concurrent import futures
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Sequence

from absl import logging

from evejax import observe
from evejax import storage
from evejax.eval import benchmarks as benchmarks_lib
from evejax.eval import evaluator as evaluator_lib
from evejax.eval import readers
from evejax.eval import report
from evejax.eval.records import Item

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"


class EvalError(ValueError):
  """A user-fixable problem with an evaluation (output dir, config)."""


def unique_ids(items: Sequence[Item]) -> list[Item]:
  """Items with ids made unique (a repeated id gets '#2', '#3', ...)."""
  seen: dict[str, int] = {}
  out = []
  for it in items:
    n = seen.get(it.id, 0) + 1
    seen[it.id] = n
    out.append(it if n == 1 else dataclasses.replace(it, id=f"{it.id}#{n}"))
  return out


def chunk_seed(seed: int, benchmark: str, chunk: int) -> int:
  h = hashlib.sha256(json.dumps([seed, benchmark, chunk]).encode()).digest()
  return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def _check_run(out_dir: str, identity: dict[str, Any]) -> None:
  path = os.path.join(out_dir, RUN_FILE)
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    changed = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
    if changed:
      raise EvalError(
          f"{out_dir} holds results of another evaluation (differs in {changed}); use another "
          "--workdir, or delete that folder to start over.")
    return
  with open(path, "w") as f:
    json.dump(identity, f, indent=1, sort_keys=True)


def evaluate_benchmark(evaluator: evaluator_lib.Evaluator, params, loaded: readers.Loaded,
                       out_dir: str, *, chunk_size: int, seed: int = 0, limit: int = 0,
                       model: dict[str, Any] | None = None, progress: bool = True
                       ) -> dict[str, Any]:
  """Evaluates the items of `loaded` into `out_dir`; returns the summary dict.

  Args:
    evaluator: the benchmark + profile + sampler.
    params: model params on the sampler's mesh.
    loaded: what the reader found (items and skipped rows).
    out_dir: this benchmark's output folder (created).
    chunk_size: items per `generate` call.
    seed: sampling seed (chunk i samples with a seed of (seed, benchmark, i)).
    limit: evaluate only the first `limit` items (0: all).
    model: how the model was loaded, written into the summary.
    progress: draw a progress bar (and log a line with ETA periodically).
  """
  bench = evaluator.benchmark
  os.makedirs(out_dir, exist_ok=True)
  items = unique_ids(loaded.items)
  skipped = list(loaded.skipped)
  if limit:
    items, skipped = items[:limit], []
  identity = {"benchmark": bench.name, "profile": evaluator.describe(),
              "data": os.path.abspath(loaded.path), "num_items": len(items),
              "num_skipped_rows": len(skipped), "model": model or {}, "seed": seed}
  _check_run(out_dir, identity)
  results_path = os.path.join(out_dir, RESULTS_FILE)
  storage.drop_torn_tail(results_path)   # a row a killed run left half-written
  done = {r["id"]: r for r in observe.read_jsonl(results_path)}
  chunk_size = max(1, int(chunk_size))
  chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
  todo = [(k, c) for k, c in enumerate(chunks) if any(it.id not in done for it in c)]

  sampled = 0
  compile_before = evaluator.sampler.compile_seconds
  start = time.perf_counter()
  with open(results_path, "a", buffering=1) as out, \
       futures.ThreadPoolExecutor(1, thread_name_prefix="eval-prompts") as host:
    for s in skipped:
      if s.id not in done:
        row = evaluator_lib.failure_row(s.id, s.reason, s.detail)
        out.write(json.dumps(row) + "\n")
        done[s.id] = row
    bar = observe.progress(len(items), f"eval/{bench.name}",
                           initial=sum(1 for it in items if it.id in done),
                           force=False) if progress else None
    pending = host.submit(evaluator.prepare, todo[0][1]) if todo else None
    for n, (k, chunk) in enumerate(todo):
      prepared = pending.result()
      pending = host.submit(evaluator.prepare, todo[n + 1][1]) if n + 1 < len(todo) else None
      rows = evaluator.run(params, prepared, chunk_seed(seed, bench.name, k))
      new = [r for r in rows if r["id"] not in done]
      out.write("".join(json.dumps(r) + "\n" for r in new))
      out.flush()
      for r in new:
        done[r["id"]] = r
      sampled += len(chunk)
      if bar is not None:
        bar.update(len(new))
    if bar is not None:
      bar.close()
  elapsed = time.perf_counter() - start
  compiling = evaluator.sampler.compile_seconds - compile_before

  order = [s.id for s in skipped] + [it.id for it in items]
  rows = [done[i] for i in order if i in done]
  summary = benchmarks_lib.summarise(bench, rows, judged=evaluator.judge is not None)
  summary.update({
      "profile": evaluator.describe(), "model": model or {},
      "data": {"path": os.path.abspath(loaded.path), "format": loaded.format,
               "items": len(items), "skipped_rows": len(skipped)},
      "items_per_s": sampled / elapsed if sampled and elapsed > 0 else None,
      # The same without the sampler's compiles (a compilation cache skips them).
      "items_per_s_compiled": (sampled / (elapsed - compiling)
                               if sampled and elapsed > compiling else None),
      "sampled_this_run": sampled, "elapsed_s": elapsed,
      "sampler": {"compiles": evaluator.sampler.num_compiles,
                  "compile_s": evaluator.sampler.compile_seconds},
  })
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(report.benchmark_markdown(summary))
  logging.info("%s: %s = %.2f over %d counted rows (%s)", bench.name, bench.headline,
               summary["score"], summary["num_counted"], summary["failures"] or "no failures")
  return summary
