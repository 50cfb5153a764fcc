"""Runs one program in the sandbox, for a person debugging a transformation.

  python -m evejax.sandbox.run PROGRAM.py --image IMG [--out DIR]
  python -m evejax.sandbox.run DRAWING.svg [--out DIR]
  python -m evejax.sandbox.run PLOT.py --kind plot [--out DIR]
  python -m evejax.sandbox.run --probe        # which isolation layers work here

Prints the JSON result (reason, detail, args, stdout, ...) and writes each
output image to DIR/output_<k>.png (default: <program name>_out next to the
program). Exit status 0 when the result is ok, 1 when it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from evejax.sandbox import checks as checks_lib
from evejax.sandbox import programs
from evejax.sandbox.jobs import EveJob, PlotJob, SvgJob
from evejax.sandbox.pool import SandboxConfig, SandboxPool


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m evejax.sandbox.run",
      description="Run one program in the evejax sandbox and show the result.")
  p.add_argument("program", nargs="?", help="EVE/plot Python file or SVG file")
  p.add_argument("--image", help="source image (EVE contract)")
  p.add_argument("--out", help="directory for the output images")
  p.add_argument("--kind", choices=("eve", "svg", "plot"),
                 help="contract (default: svg for .svg files, else eve)")
  p.add_argument("--num-args", type=int, default=4,
                 help="how many dicts args_list must hold (EVE)")
  p.add_argument("--timeout", type=float, default=20.0,
                 help="wall-clock limit in seconds")
  p.add_argument("--probe", action="store_true",
                 help="only report which isolation layers are active")
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if args.probe:
    with SandboxPool(SandboxConfig(workers=1)) as pool:
      print(json.dumps(pool.layers.to_dict(), indent=2))
    return 0
  if not args.program:
    _parser().error("give a PROGRAM (or --probe)")
  kind = args.kind or ("svg" if args.program.endswith(".svg") else "eve")
  with open(args.program, "rb") as f:
    source = f.read()
  if kind == "eve":
    if not args.image:
      _parser().error("the EVE contract needs --image IMG")
    with open(args.image, "rb") as f:
      image = f.read()
    job = EveJob(source, image, num_args=args.num_args)
  elif kind == "svg":
    job = SvgJob(source)
  else:
    job = PlotJob(source)
  config = SandboxConfig(workers=1, timeout_s=args.timeout,
                         svg_timeout_s=args.timeout,
                         checks=checks_lib.CheckConfig())
  try:
    with SandboxPool(config) as pool:
      result = pool.map([job])[0]
  except ValueError as e:  # a bad input image, with a message that says why
    print(f"error: {e}", file=sys.stderr)
    return 2
  out_dir = args.out or os.path.splitext(args.program)[0] + "_out"
  written = []
  if result.images:
    os.makedirs(out_dir, exist_ok=True)
    for k, img in enumerate(result.images):
      path = os.path.join(out_dir, f"output_{k}.png")
      with open(path, "wb") as f:
        f.write(programs.encode_png(img))
      written.append(path)
  summary = result.to_json()
  summary["written"] = written
  print(json.dumps(summary, indent=2))
  return 0 if result.ok else 1


if __name__ == "__main__":
  sys.exit(main())
