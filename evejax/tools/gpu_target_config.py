r"""Writes this host's GPU as a GPU target config, for compiling without it elsewhere.

  python -m evejax.tools.gpu_target_config --out h100.txtpb       # on a GPU host
  python -m evejax.tools.aot_compile --config ... --target gpu:h100x8 \
      --gpu_target_config h100.txtpb                               # anywhere

`aot_compile --target gpu:<node>` describes the node's GPUs to XLA's GPU
compiler with a text `GpuTargetConfigProto` (`targets.gpu_target_config`:
built in for H100, H200 and A100 SXM from their published facts). This tool
writes the description of the GPU it runs on instead, read from the CUDA
driver (`cuDeviceGetAttribute`, libcuda.so.1: no CUDA toolkit needed) and
from jax (device kind, memory limit): the exact part, clocks and memory a
rented node has. Fields the driver does not answer keep the built-in values
of the closest GPU, and are listed on stderr. `evejax/tools/gpu_benchmarks.sh`
runs it when a GPU is lent (not yet run on one: no GPU has been lent).
"""
from __future__ import annotations

import ctypes
import sys

from absl import app
from absl import flags

_OUT = flags.DEFINE_string("out", "", "Where to write the text proto (default: stdout).")

# CUdevice_attribute values (cuda.h) of the fields the target config holds.
_ATTRIBUTES = {
    "shared_memory_per_block": 8, "registers_per_block_limit": 12, "clock_khz": 13,
    "core_count": 16, "memory_clock_khz": 36, "bus_width_bits": 37, "l2_cache_size": 38,
    "threads_per_core_limit": 39, "major": 75, "minor": 76, "shared_memory_per_core": 81,
    "registers_per_core_limit": 82, "shared_memory_per_block_optin": 97,
}


def driver_attributes(device: int = 0) -> dict[str, int]:
  """The attributes above from the CUDA driver ({} without one)."""
  try:
    cuda = ctypes.CDLL("libcuda.so.1")
  except OSError:
    return {}
  if cuda.cuInit(0) != 0:
    return {}
  handle = ctypes.c_int()
  if cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
    return {}
  out = {}
  for name, attribute in _ATTRIBUTES.items():
    value = ctypes.c_int()
    if cuda.cuDeviceGetAttribute(ctypes.byref(value), attribute, handle) == 0:
      out[name] = value.value
  return out


def describe(attributes: dict[str, int], kind: str, memory: int) -> tuple[str, list[str]]:
  """(the text proto, fields left at the built-in values of the closest GPU)."""
  from evejax.tools import targets  # pylint: disable=g-import-not-at-top
  a = attributes
  bandwidth = None
  if "memory_clock_khz" in a and "bus_width_bits" in a:
    # Double data rate: two transfers per clock.
    bandwidth = int(2 * a["memory_clock_khz"] * 1e3 * a["bus_width_bits"] / 8)
  fields = dict(
      description=kind or None, sms=a.get("core_count"),
      capability=(a["major"], a["minor"]) if "major" in a and "minor" in a else None,
      smem_per_block=a.get("shared_memory_per_block"),
      smem_per_sm=a.get("shared_memory_per_core"),
      smem_optin=a.get("shared_memory_per_block_optin"),
      threads_per_sm=a.get("threads_per_core_limit"), l2=a.get("l2_cache_size"),
      regs_per_sm=a.get("registers_per_core_limit"),
      regs_per_block=a.get("registers_per_block_limit"),
      clock_ghz=a["clock_khz"] / 1e6 if "clock_khz" in a else None,
      memory=memory or None, bandwidth=bandwidth)
  base = "h100" if a.get("major", 9) >= 9 else "a100"
  missing = sorted(k for k, v in fields.items() if v is None)
  return targets.gpu_target_config(base, **fields), missing


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  gpus = [d for d in jax.devices() if d.platform == "gpu"]
  if not gpus:
    sys.exit("gpu_target_config: no GPU here (jax sees "
             f"{jax.devices()[0].platform}); run it on the GPU host to describe.")
  stats = gpus[0].memory_stats() or {}
  text, missing = describe(driver_attributes(), gpus[0].device_kind,
                           int(stats.get("bytes_limit", 0)))
  if missing:
    print(f"gpu_target_config: built-in values kept for {', '.join(missing)}",
          file=sys.stderr)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text)
    print(f"wrote {_OUT.value} ({gpus[0].device_kind})")
  else:
    print(text, end="")


if __name__ == "__main__":
  app.run(main)
