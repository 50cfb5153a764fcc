"""Benchmark: the sandbox against no isolation and against the published way.

  python -m evejax.tools.bench_sandbox [--programs 48] [--size 384]
      [--workers 2] [--repeats 3] [--markdown]

Runs the same valid EVE-contract programs (the built-in transformation
library, evejax.data.transforms, with sampled arguments) three ways in one
process run and prints programs/s and the ratios:

* inline: the harness called in this process, no isolation at all (the
  limit any sandbox can approach);
* published: one `multiprocessing.Process` per program with results through
  a `multiprocessing.Manager` dict, a new Manager per program, as the EVE
  reference does;
* pool: `SandboxPool` (every isolation layer this machine provides), with
  one worker (pure overhead) and with --workers workers.

All three run the same harness (`harness.run`), the same static analysis and
the same validity checks (`programs.assemble`) on the host, and must agree on
every result's reason. Pool start-up is reported separately and excluded.
Each method's time is the median over --repeats rounds; rounds interleave the
methods so that load from other processes affects all of them alike.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import time

import numpy as np
from PIL import Image, ImageDraw
import psutil

from evejax.sandbox import harness
from evejax.sandbox import programs
from evejax.sandbox import wire
from evejax.sandbox.jobs import EveJob
from evejax.sandbox.pool import SandboxConfig, SandboxPool

_FALLBACK = {
    "rotate": ("from PIL import Image\n\n\ndef edit_image(img, angle):\n"
               "    return img.rotate(angle, expand=True)\n",
               [{"angle": a} for a in (30, 95, 160, 250)]),
    "highlight_box": ("from PIL import Image, ImageDraw\n\n\n"
                      "def edit_image(img, box):\n"
                      "    ImageDraw.Draw(img).rectangle(box, outline=(255, 0, "
                      "0), width=4)\n    return img\n",
                      [{"box": [10 + 40 * i, 20, 90 + 40 * i, 120]}
                       for i in range(4)]),
}


def source_images(n: int, size: int, seed: int) -> list[np.ndarray]:
  """Procedural photos-ish: gradients with a few shapes, 4:3."""
  rng = np.random.default_rng(seed)
  h, w = size * 3 // 4, size
  out = []
  for _ in range(n):
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h,
                     np.full_like(xx, rng.integers(60, 200))], -1)
    im = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
      x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
      draw.ellipse([x0, y0, x0 + rng.integers(20, w // 3),
                    y0 + rng.integers(20, h // 3)],
                   fill=tuple(int(c) for c in rng.integers(30, 255, 3)))
    out.append(np.asarray(im))
  return out


def make_programs(n: int, size: int, seed: int) -> list[EveJob]:
  rng = np.random.default_rng(seed)
  images = source_images(8, size, seed)
  try:
    from evejax.data import transforms  # pylint: disable=g-import-not-at-top
    families = list(transforms.library().values())
    sources = []
    for i in range(n):
      fam = families[i % len(families)]
      img = images[i % len(images)]
      sources.append(fam.program(fam.sample(rng, img.shape[1], img.shape[0])))
  except ImportError:
    fams = list(_FALLBACK.values())
    sources = []
    for i in range(n):
      text, args = fams[i % len(fams)]
      sources.append(text + "\n\nargs_list = " + repr(args) + "\n")
  return [EveJob(src, images[i % len(images)]) for i, src in enumerate(sources)]


# ------------------------------------------------------------------ methods

def _collect():
  chunks = []

  def emit(header, payload):
    for buf in wire.encode(header, payload):
      chunks.append(bytes(buf))
  return chunks, emit


def run_inline(preps, cfg):
  out = []
  for prep in preps:
    t0 = time.monotonic()
    chunks, emit = _collect()
    harness.run(prep.request, prep.payload, emit, hide=False)
    status = programs.ProcessStatus(exit_code=0,
                                    wall_s=time.monotonic() - t0)
    out.append(programs.assemble(prep, b"".join(chunks), status, cfg))
  return out


def _published_child(request, payload, shared):
  chunks, emit = _collect()
  harness.run(request, payload, emit, hide=False)
  shared["stream"] = b"".join(chunks)


def run_published(preps, cfg, timeout_s=20.0):
  """The reference's way: Manager + Process per program, join with timeout."""
  out = []
  for prep in preps:
    t0 = time.monotonic()
    manager = multiprocessing.Manager()
    shared = manager.dict()
    proc = multiprocessing.Process(target=_published_child,
                                   args=(prep.request, prep.payload, shared))
    proc.start()
    proc.join(timeout=timeout_s)
    if proc.is_alive():
      proc.terminate()
      proc.join()
    stream = shared.get("stream", b"")
    manager.shutdown()
    status = programs.ProcessStatus(exit_code=proc.exitcode,
                                    wall_s=time.monotonic() - t0)
    out.append(programs.assemble(prep, stream, status, cfg))
  return out


def _worker_usage(pool) -> np.ndarray:
  """[zygote CPU s, zygote faults, jobs CPU s, jobs faults] so far.

  Jobs are the zygotes' reaped children; faults are minor page faults.
  """
  total = np.zeros(4)
  ticks = os.sysconf("SC_CLK_TCK")
  for stats in pool.stats():
    for proc in psutil.Process(stats["launcher_pid"]).children():
      with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      minflt, cminflt = int(fields[7]), int(fields[8])
      utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
      total += ((utime + stime) / ticks, minflt, (cutime + cstime) / ticks,
                cminflt)
  return total


def _host_usage() -> np.ndarray:
  ru = resource.getrusage(resource.RUSAGE_SELF)
  return np.array([ru.ru_utime + ru.ru_stime, ru.ru_minflt])


def run_pool(jobs, workers):
  """Returns results, wall s, CPU s, start-up s, layers and the split
  [host CPU s, host faults, zygote CPU s, faults, jobs CPU s, faults]."""
  t0 = time.monotonic()
  with SandboxPool(SandboxConfig(workers=workers)) as pool:
    startup = time.monotonic() - t0
    pool.map(jobs[:workers])  # every worker has served once
    usage0 = np.concatenate([_host_usage(), _worker_usage(pool)])
    t1 = time.monotonic()
    results = pool.map(jobs)
    elapsed = time.monotonic() - t1
    split = np.concatenate([_host_usage(), _worker_usage(pool)]) - usage0
    layers = pool.layers.active()
  return results, elapsed, split[0::2].sum(), startup, layers, split


def _cpu(who) -> float:
  ru = resource.getrusage(who)
  return ru.ru_utime + ru.ru_stime


def _all_cpu() -> float:
  return _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m evejax.tools.bench_sandbox",
                              description=__doc__.splitlines()[0])
  p.add_argument("--programs", type=int, default=48)
  p.add_argument("--size", type=int, default=384,
                 help="source image width (height is 3/4 of it)")
  p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--markdown", action="store_true",
                 help="print the table as Markdown")
  args = p.parse_args(argv)

  jobs = make_programs(args.programs, args.size, args.seed)
  cfg = SandboxConfig().checks
  preps = [programs.prepare(j, cfg) for j in jobs]
  if not all(isinstance(x, programs.Prepared) for x in preps):
    print("a benchmark program failed static analysis:",
          [x.detail for x in preps if not isinstance(x, programs.Prepared)])
    return 1

  times = {"inline": [], "published": [], "pool1": [], "poolN": []}
  cpus = {k: [] for k in times}
  startups, reasons, layers, splits = [], {}, [], []
  for _ in range(args.repeats):
    for key, fn in (("inline", run_inline), ("published", run_published)):
      c0, t0 = _all_cpu(), time.monotonic()
      reasons[key] = [r.reason for r in fn(preps, cfg)]
      times[key].append(time.monotonic() - t0)
      cpus[key].append(_all_cpu() - c0)
    # Pools last in a round: the published way forks this process, which must
    # not have pool threads running at that moment.
    for key, workers in (("pool1", 1), ("poolN", args.workers)):
      res, elapsed, cpu, startup, layers, split = run_pool(jobs, workers)
      if key == "pool1":
        splits.append(split)
      reasons[key] = [r.reason for r in res]
      times[key].append(elapsed)
      cpus[key].append(cpu)
      startups.append(startup)

  n = len(jobs)
  rate = {k: n / statistics.median(v) for k, v in times.items()}
  cpu_ms = {k: 1000 * statistics.median(v) / n for k, v in cpus.items()}
  agree = len({tuple(v) for v in reasons.values()}) == 1
  ok = sum(r == "ok" for r in reasons["inline"])
  rows = [
      ("inline, no isolation", "inline"),
      ("published: Process + Manager per program", "published"),
      ("evejax pool, 1 worker", "pool1"),
      (f"evejax pool, {args.workers} workers", "poolN"),
  ]
  size = f"{args.size}x{args.size * 3 // 4}"
  print(f"{n} EVE programs (4 edits each) on {size} images, "
        f"{os.cpu_count()} CPUs, median of {args.repeats}; {ok}/{n} valid; "
        f"methods agree on every reason: {agree}")
  print(f"pool layers active: {', '.join(layers)}; pool start-up "
        f"{statistics.median(startups):.2f} s (excluded)")
  print(f"load average at the end: {os.getloadavg()[0]:.1f}")
  if args.markdown:
    print("\n| method | programs/s | wall ms/program | CPU ms/program | "
          "x published | x inline |")
    print("|---|---:|---:|---:|---:|---:|")
  for name, key in rows:
    r = rate[key]
    cells = (name, f"{r:.1f}", f"{1000 / r:.1f}", f"{cpu_ms[key]:.1f}",
             f"{r / rate['published']:.1f}", f"{r / rate['inline']:.2f}")
    if args.markdown:
      print("| " + " | ".join(cells) + " |")
    else:
      print(f"{cells[0]:<42} {cells[1]:>7} programs/s {cells[2]:>7} ms "
            f"wall {cells[3]:>7} ms CPU {cells[4]:>6}x published "
            f"{cells[5]:>6}x inline")
  print("CPU ms/program counts every process involved (host, Manager, "
        "workers, jobs):\nisolation overhead = pool CPU - inline CPU.")
  split = np.median(np.stack(splits), axis=0) / n
  print(f"pool, 1 worker, per program (median): host {1000 * split[0]:.1f} ms "
        f"CPU, {split[1]:.0f} page faults; zygote {1000 * split[2]:.1f} ms, "
        f"{split[3]:.0f}; job process {1000 * split[4]:.1f} ms, "
        f"{split[5]:.0f} (inline: {cpu_ms['inline']:.1f} ms CPU in all)")
  return 0 if agree else 1


if __name__ == "__main__":
  sys.exit(main())
