"""The library behind `python -m evejax.tools.aot_compile` (see its docstring):
compile a config's programs for a target and tabulate memory, FLOPs and the roofline."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from typing import Any

GiB = 1024 ** 3


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True, cwd=os.path.dirname(__file__)).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _machine() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  except OSError:
    model = platform.processor()
  return f"{os.cpu_count()}-vCPU {model}".strip()


def _hbm_error(message: str) -> int:
  """Bytes the compiler said a program needs, from its out-of-memory message (or 0)."""
  import re  # pylint: disable=g-import-not-at-top
  for pattern in (r"Used ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm",
                  r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds"):
    m = re.search(pattern, message)
    if m:
      return int(float(m.group(1)) * 1024 ** ("KMGT".index(m.group(2)) + 1))
  return 0


def compile_all(progs, chip, *, log=print) -> list[dict[str, Any]]:
  """Compiles each program; returns one result dict per program (errors included)."""
  from evejax.models import attention  # pylint: disable=g-import-not-at-top
  from evejax.tools import hlo_cost, targets  # pylint: disable=g-import-not-at-top
  results = []
  for prog in progs:
    row: dict[str, Any] = {"name": prog.name, "kind": prog.kind, "role": prog.role,
                           "shape": prog.shape, "resident_bytes": prog.resident,
                           "hbm_bytes": chip.hbm_bytes}
    start = time.perf_counter()
    try:
      with attention.compiling_for(chip.platform), targets.no_persistent_cache():
        built = prog.compile()
      compiled = built[prog.part] if prog.part else built
      row["compile_s"] = (built["seconds"][prog.part] if prog.part
                          else time.perf_counter() - start)
      stats = compiled.memory_analysis()
      row.update(argument_bytes=stats.argument_size_in_bytes,
                 output_bytes=stats.output_size_in_bytes,
                 alias_bytes=stats.alias_size_in_bytes, temp_bytes=stats.temp_size_in_bytes,
                 program_bytes=targets.program_bytes(stats))
      row["peak_bytes"] = row["program_bytes"] + prog.resident
      cost = hlo_cost.loop_aware_cost(compiled)
      row.update(flops=cost.flops, bytes_accessed=cost.bytes_accessed,
                 flops_xla_once=cost.flops_once, bytes_xla_once=cost.bytes_once,
                 loops=cost.loops, unknown_loops=cost.unknown_loops)
      # XLA's cost model does not see inside Mosaic kernels (splash attention), so
      # where the model's own count is larger the compute time takes that one.
      flops = max(cost.flops, prog.model_flops)
      compute_s, memory_s = flops / chip.peak_flops, cost.bytes_accessed / chip.hbm_bytes_per_s
      row.update(compute_s=compute_s, memory_s=memory_s,
                 roofline_s=max(compute_s, memory_s),
                 bound=("memory" if compute_s < memory_s else
                        "compute (model FLOPs)" if flops > cost.flops else "compute"))
      if prog.model_flops:
        row["model_flops"] = prog.model_flops
        row["mfu_bound"] = prog.model_flops / chip.peak_flops / row["roofline_s"]
      row["fits"] = row["peak_bytes"] <= chip.hbm_bytes
    except Exception as e:  # pylint: disable=broad-except
      message = f"{type(e).__name__}: {e}"
      row.update(error=message.splitlines()[0][:400], fits=False,
                 compile_s=time.perf_counter() - start)
      needed = _hbm_error(message)
      if needed:
        row["program_bytes"] = needed
        row["peak_bytes"] = needed + prog.resident
    results.append(row)
    log(_line(row), flush=True)
  return results


def _gib(n) -> str:
  return "—" if n is None else f"{n / GiB:.2f}"


def _line(r: dict[str, Any]) -> str:
  head = f"  {r['name']:60s} {r['compile_s']:6.1f}s "
  if "error" in r:
    return head + f"FAILED: {r['error']}"
  mfu = f", MFU bound {r['mfu_bound']:.0%}" if "mfu_bound" in r else ""
  at_least = ">=" if r["unknown_loops"] else ""   # a loop counted once: its bound was not read
  return (head + f"program {_gib(r['program_bytes'])} + resident {_gib(r['resident_bytes'])} "
          f"= {_gib(r['peak_bytes'])} GiB ({r['peak_bytes'] / r['hbm_bytes']:.0%} of HBM, "
          f"{'fits' if r['fits'] else 'DOES NOT FIT'}); {at_least}{r['flops'] / 1e12:.3g} TFLOP, "
          f"{r['bytes_accessed'] / 1e9:.3g} GB; roofline {r['roofline_s'] * 1e3:.3g} ms "
          f"({r['bound']}){mfu}")


def markdown(plan: dict[str, Any]) -> str:
  """The plan as a markdown table (the numbers are compiler estimates)."""
  lines = [f"# TPU compiler plan: `{plan['config']}` on `{plan['target']}`", "",
           f"mesh {plan['mesh']} over {plan['devices']} x {plan['chip']} "
           f"({plan['hbm_gib']:.0f} GiB HBM, {plan['peak_tflops']:.0f} TFLOP/s bf16, "
           f"{plan['hbm_gbps']:.0f} GB/s); commit {plan['commit']}, compiled on "
           f"{plan['machine']} with jax {plan['jax']}, libtpu {plan['libtpu']}.", "",
           "Resident per device (train states, references): " + ", ".join(
               f"{k} {_gib(v)} GiB" for k, v in plan["resident"].items()), "",
           "Memory: the compiler's buffer assignment per device. FLOPs and bytes: its optimized "
           "program, loops counted by trip count. Roofline: max(FLOPs/peak, bytes/bandwidth), "
           "an estimate, not a measurement; \"compute (model FLOPs)\": the model's own count "
           "was larger than the compiler's, whose cost model does not see inside Mosaic "
           "kernels (splash attention), so the compute time uses it.", "",
           "| program | shape | compile s | program GiB | peak GiB | % HBM | fits | TFLOP | GB "
           "accessed | roofline ms | bound | MFU bound |",
           "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|"]
  for r in plan["programs"]:
    if "error" in r:
      lines.append(f"| `{r['name']}` | {r['shape']} | {r['compile_s']:.1f} | "
                   f"{_gib(r.get('program_bytes'))} | {_gib(r.get('peak_bytes'))} | | **no** | "
                   f"| | | | {r['error'][:120]} |")
      continue
    mfu = f"{r['mfu_bound']:.0%}" if "mfu_bound" in r else ""
    lines.append(
        f"| `{r['name']}` | {r['shape']} | {r['compile_s']:.1f} | {_gib(r['program_bytes'])} | "
        f"{_gib(r['peak_bytes'])} | {r['peak_bytes'] / r['hbm_bytes']:.0%} | "
        f"{'yes' if r['fits'] else '**no**'} | {'≥' if r['unknown_loops'] else ''}"
        f"{r['flops'] / 1e12:.3g} | "
        f"{r['bytes_accessed'] / 1e9:.3g} | {r['roofline_s'] * 1e3:.3g} | {r['bound']} | {mfu} |")
  return "\n".join(lines) + "\n"


def make_target_mesh(mesh_spec: dict[str, int], devices):
  """The ('data', 'fsdp', 'tensor') mesh of `mesh_spec` over the target's devices."""
  import math  # pylint: disable=g-import-not-at-top
  from evejax import parallel  # pylint: disable=g-import-not-at-top
  axes = {k: int(v) for k, v in mesh_spec.items() if k in parallel.MESH_AXES}
  if not any(v == -1 for v in axes.values()):
    n = math.prod(v for v in axes.values() if v > 0)
    if n > len(devices):
      from evejax.tools import targets  # pylint: disable=g-import-not-at-top
      raise targets.TargetError(f"mesh {axes} needs {n} devices; the target has {len(devices)}.")
    devices = devices[:n]
  return parallel.make_mesh(axes, devices=devices)


def run(config_spec: str, target: str, *, overrides=(), mesh_spec: str = "",
        largest: bool = False, only: str = "", workdir: str = "", gpu_target_config: str = "",
        log=print) -> dict[str, Any]:
  """Compiles every program of `config_spec` for `target`; returns (and writes) the plan."""
  import jax  # pylint: disable=g-import-not-at-top
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  from evejax.tools import aot_programs, targets  # pylint: disable=g-import-not-at-top
  top = targets.topology(target)
  devices = targets.devices(top, gpu_target_config)
  config = config_utils.load_config(config_spec, list(overrides))
  spec = (targets.parse_mesh(mesh_spec) if mesh_spec
          else {k: config.mesh[k] for k in ("data", "fsdp", "tensor")})
  mesh = make_target_mesh(spec, devices)
  with config.unlocked():
    for k, v in mesh.shape.items():
      config.mesh[k] = int(v)
  log(f"{config_spec} on {top.target}: {len(devices)} x {devices[0].device_kind}, mesh "
      f"{dict(mesh.shape)}", flush=True)
  progs, resident = aot_programs.programs(config, mesh, largest=largest)
  wanted = tuple(filter(None, only.split(",")))
  if wanted:
    progs = [p for p in progs if p.kind in wanted or p.name.startswith(wanted)]
  log(f"{len(progs)} programs; resident per device: " + ", ".join(
      f"{k} {v / GiB:.2f} GiB" for k, v in resident.items()), flush=True)
  results = compile_all(progs, top.chip, log=log)
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    libtpu = metadata.version("libtpu")
  except Exception:  # pylint: disable=broad-except
    libtpu = "none"
  plan = {"config": config_spec, "overrides": list(overrides), "target": top.target,
          "chip": top.chip.name,
          "devices": mesh.devices.size, "mesh": dict(mesh.shape),
          "hbm_gib": top.chip.hbm_bytes / GiB, "peak_tflops": top.chip.peak_flops / 1e12,
          "hbm_gbps": top.chip.hbm_bytes_per_s / 1e9, "commit": _commit(),
          "machine": _machine(), "jax": jax.__version__, "libtpu": libtpu,
          "resident": resident, "programs": results,
          "note": "compiler estimates: memory from buffer assignment, FLOPs/bytes from the "
                  "optimized program, roofline time = max(FLOPs/peak, bytes/bandwidth)"}
  workdir = workdir or os.path.join(
      "aot", f"{config_spec.replace('/', '_').replace('.py:', '_')}_{top.name}")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "aot_plan.json"), "w") as f:
    json.dump(plan, f, indent=1, default=str)
  with open(os.path.join(workdir, "aot_plan.md"), "w") as f:
    f.write(markdown(plan))
  plan["workdir"] = workdir
  return plan


def failures(plan: dict[str, Any]) -> list[str]:
  """One line per program that does not compile or does not fit."""
  out = []
  for r in plan["programs"]:
    if "error" in r:
      need = (f" (needs {_gib(r['peak_bytes'])} GiB with the resident state)"
              if r.get("peak_bytes") else "")
      out.append(f"{r['name']} does not compile{need}: {r['error']}")
    elif not r["fits"]:
      out.append(f"{r['name']} does not fit: {_gib(r['peak_bytes'])} GiB per device "
                 f"({_gib(r['program_bytes'])} program + {_gib(r['resident_bytes'])} resident) "
                 f"of {_gib(r['hbm_bytes'])} GiB HBM")
  return out
