r"""Every program of a config compiled by the TPU compiler, on a machine without TPUs.

  python -m evejax.tools.aot_compile --config configs/eve.py:qwen3_vl_8b --target tpu:v5p-16
  python -m evejax.tools.aot_compile --config configs/mmzero.py:tiny --target tpu:v5p-8 \
      --mesh fsdp=4 --largest --workdir /tmp/aot

Builds the target's compile-only devices (`evejax.tools.targets`: libtpu
describes a v5p-16 slice without one), the config's mesh over them, abstract
params and optimizer states with their shardings, and compiles, without
running, every program a run of the config executes (`aot_programs`: each
policy's train step per stage kind, the reference pass, the sampler's prefill
and decode for every sampling call and bucket combination or with --largest
the largest of each, and with slot decoding its state and insert programs, the
vision tower, the evaluator's chunks). Splash
attention is the Mosaic kernel here, as on a TPU (`attention.compiling_for`).

Per program, per device:
  memory     the TPU compiler's buffer assignment: arguments + outputs -
             aliased (donated) + temporaries; "peak" adds what stays resident
             beside the program (every policy's train state and reference, as
             `plan_memory` counts them), set against the chip's HBM
  FLOPs      the compiler's optimized program, every loop counted by its trip
             count (`hlo_cost`: XLA's own cost analysis counts a loop body
             once); a decode loop at its bound (every row runs to the budget)
  roofline   max(FLOPs / peak FLOP/s, bytes / HBM bandwidth): a compiler
             ESTIMATE of the step time, not a measurement (no collectives,
             no overlap, no kernel efficiency); the MFU bound is the model
             FLOPs `bench_train` counts (per device) over that time and peak.
             A decode loop counts every stage's bound (its exit is data
             dependent): an upper bound, up to about 2x where a later stage's
             start cannot be read from the program
JSON and a markdown table go to --workdir; the exit status is 1, with the
program and its bytes named, when a program does not fit or does not compile.
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags

from evejax.tools.aot_plan import failures, run

_CONFIG = flags.DEFINE_string("config", None, "Config file path.py:preset (a recipe's or "
                              "configs/eval.py's).")
_SET = flags.DEFINE_multi_string("set", [], "A config override a.b=value (repeatable), as "
                                  "--config.a.b=value is for evejax.main.")
_TARGET = flags.DEFINE_string("target", "tpu:v5p-8", "tpu:<slice> (v4-8, v5p-16, v5e-8, "
                              "v6e-16, ...) or gpu:<node> (h100x8).")
_MESH = flags.DEFINE_string("mesh", "", "Mesh, e.g. 'fsdp=16' or 'data=2,fsdp=8' (default: "
                            "the config's; -1 takes the target's remaining devices).")
_LARGEST = flags.DEFINE_bool("largest", False, "Per sampling call, only the largest bucket "
                             "combination (else every combination the buckets allow).")
_ONLY = flags.DEFINE_string("only", "", "Comma-separated program kinds (train, score, "
                            "prefill, decode, vision) or name prefixes (train/solver, "
                            "prefill/challenger) to compile; default all.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where aot_plan.json and aot_plan.md go "
                               "(default: aot/<config>_<target>).")
_GPU_CONFIG = flags.DEFINE_string("gpu_target_config", "", "GPU targets: a GpuTargetConfigProto "
                                  "text file (tools/gpu_target_config.py dumps one).")


def main(argv):
  del argv
  if not _CONFIG.value:
    raise app.UsageError("--config is required, e.g. --config configs/eve.py:qwen3_vl_8b.")
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  from evejax.tools import targets  # pylint: disable=g-import-not-at-top
  targets.setup_host()
  try:
    plan = run(_CONFIG.value, _TARGET.value, overrides=_SET.value, mesh_spec=_MESH.value,
               largest=_LARGEST.value,
               only=_ONLY.value, workdir=_WORKDIR.value, gpu_target_config=_GPU_CONFIG.value)
  except (targets.TargetError, config_utils.ConfigError) as e:
    sys.exit(f"aot_compile: {e}")
  print(f"\nwrote {plan['workdir']}/aot_plan.json and aot_plan.md")
  bad = failures(plan)
  if bad:
    sys.exit("aot_compile: " + "\n  ".join([f"{len(bad)} program(s) fail on {plan['target']}:"]
                                            + bad))


if __name__ == "__main__":
  app.run(main)
