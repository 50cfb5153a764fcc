r"""Accelerators by the names users rent, and compile-only devices for them.

One table (`CHIPS`) holds each chip's memory, peak dense bf16 FLOP/s and
memory bandwidth, with its source; `TOPOLOGIES` names TPU slices as Cloud TPU
sells them (v4-8, v5p-16, v5e-8, v6e-16, ...) and GPU nodes as `h100x8`.
`devices(target)` builds the devices an ahead-of-time compile targets:

  tpu:<slice>   compile-only TPU devices from libtpu's topology description
                (`jax.experimental.topologies.get_topology_desc`), on a host
                without TPUs: `jit(...).lower(...).compile()` on a mesh of them
                runs the real TPU compiler. Needs libtpu (`pip install -e
                '.[tpu]' -c constraints.txt`, x86_64 Linux).
  gpu:<node>    compile-only CUDA devices from a GPU target config (a text
                `GpuTargetConfigProto`, `--gpu_target_config`) and jax's CUDA
                plugin; see `gpu_devices` for what that needs.

The host must not start a TPU runtime: run with JAX_PLATFORMS=cpu (the
tools set it before jax starts a backend), so the topology is only described.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One device as the compiler sees it (a TPU chip: one megacore on v4/v5p)."""
  name: str
  platform: str            # "tpu" | "gpu"
  hbm_bytes: int           # device memory
  peak_flops: float        # dense bf16 FLOP/s
  hbm_bytes_per_s: float   # memory bandwidth
  device_kind: str         # a substring of jax's device_kind for this chip


# Sources: Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4,
# /v5e, /v5p, /v6e: "peak compute per chip (bf16)", "HBM capacity and
# bandwidth"), NVIDIA's H100 and H200 SXM datasheets (dense BF16 Tensor Core,
# i.e. half the "with sparsity" number). HBM in GiB as plan_memory has always
# counted it; bandwidth in bytes/s.
CHIPS = {
    # v4: 32 GiB HBM2 at 1,228 GB/s, 275 TFLOP/s bf16 per chip (2 TensorCores, one megacore).
    "v4": Chip("TPU v4", "tpu", 32 * GiB, 275e12, 1228e9, "TPU v4"),
    # v5e: 16 GiB HBM2 at 819 GB/s, 197 TFLOP/s bf16 per chip (1 TensorCore).
    "v5e": Chip("TPU v5e", "tpu", 16 * GiB, 197e12, 819e9, "TPU v5 lite"),
    # v5p: 95 GiB HBM2e at 2,765 GB/s, 459 TFLOP/s bf16 per chip (2 TensorCores, one megacore).
    "v5p": Chip("TPU v5p", "tpu", 95 * GiB, 459e12, 2765e9, "TPU v5"),
    # v6e (Trillium): 32 GiB HBM at 1,640 GB/s, 918 TFLOP/s bf16 per chip (1 TensorCore).
    "v6e": Chip("TPU v6e", "tpu", 32 * GiB, 918e12, 1640e9, "TPU v6"),
    # H100 SXM5: 80 GB HBM3 at 3.35 TB/s, 989 TFLOP/s dense bf16.
    "h100": Chip("NVIDIA H100 80GB", "gpu", 80 * 10**9, 989e12, 3.35e12, "H100"),
    # H200 SXM: 141 GB HBM3e at 4.8 TB/s, 989 TFLOP/s dense bf16.
    "h200": Chip("NVIDIA H200", "gpu", 141 * 10**9, 989e12, 4.8e12, "H200"),
    # A100 SXM 80GB: HBM2e at 2,039 GB/s; 40GB: HBM2 at 1,555 GB/s; 312 TFLOP/s dense bf16.
    "a100": Chip("NVIDIA A100 80GB", "gpu", 80 * 10**9, 312e12, 2039e9, "A100"),
    "a100_40gb": Chip("NVIDIA A100 40GB", "gpu", 40 * 10**9, 312e12, 1555e9, "A100"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice or node as rented: its chip, how many, and libtpu's name for its shape."""
  name: str                # e.g. "v5p-16"
  chip: Chip
  chips: int
  shape: str = ""          # libtpu topology, e.g. "2x2x2" (TPU only)
  wrap: tuple[bool, ...] | None = None   # torus links per dimension (full cubes)

  @property
  def target(self) -> str:
    return f"{self.chip.platform}:{self.name}"


def _tpu(version: str, sizes: dict[int, str], cores_per_chip: int) -> dict[str, Topology]:
  """Slices `version-N` (N counts TensorCores on v4/v5p, chips on v5e/v6e)."""
  out = {}
  for n, shape in sizes.items():
    dims = [int(d) for d in shape.split("x")]
    # A full 4x4x4 cube and larger are tori (the wraparound links exist).
    wrap = tuple(d >= 4 for d in dims) if len(dims) == 3 and min(dims) >= 4 else None
    out[f"{version}-{n}"] = Topology(f"{version}-{n}", CHIPS[version], math.prod(dims),
                                     shape, wrap)
    assert n == math.prod(dims) * cores_per_chip, (version, n, shape)
  return out


_CUBES = {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8",
          512: "4x8x8"}
_PLANES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
           256: "16x16"}

TOPOLOGIES: dict[str, Topology] = {
    **_tpu("v4", _CUBES, 2), **_tpu("v5p", _CUBES, 2),
    **_tpu("v5e", _PLANES, 1), **_tpu("v6e", _PLANES, 1),
    **{f"{g}x{n}": Topology(f"{g}x{n}", CHIPS[g], n) for g in ("h100", "h200", "a100")
       for n in (1, 2, 4, 8, 16, 32)},
}


class TargetError(ValueError):
  """A target that cannot be built here: the message says why and what to do."""


def topology(target: str) -> Topology:
  """`tpu:v5p-16` (or `v5p-16`), `gpu:h100x8` -> its Topology."""
  platform, _, name = target.rpartition(":")
  top = TOPOLOGIES.get(name)
  if top is None or (platform and platform != top.chip.platform):
    known = ", ".join(t.target for t in TOPOLOGIES.values())
    raise TargetError(f"unknown target {target!r}; targets are {known}.")
  return top


def version_of(top: Topology) -> str:
  return top.name.split("-")[0]


def libtpu_installed() -> bool:
  return importlib.util.find_spec("libtpu") is not None


INSTALL_TPU = ("pip install -e '.[tpu]' -c constraints.txt   (x86_64 Linux: the libtpu "
               "that the pinned jax needs; no TPU is used)")


def _quiet_libtpu() -> None:
  """No TPU metadata server to ask on a host without TPUs."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def setup_host() -> None:
  """Compile-only targets: jax must describe them, never start their runtime.

  Call before anything starts a jax backend.
  """
  _quiet_libtpu()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")


def no_persistent_cache():
  """A context without jax's persistent compilation cache: compile-only
  executables can be written there but not read back (no TPU client loads
  them), so every entry would be a wasted write and a warning."""
  from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top
  return jax_config.enable_compilation_cache(False)


def devices(top: Topology, gpu_target_config: str = "") -> list:
  """Compile-only devices of `top` (one per chip)."""
  if top.chip.platform == "tpu":
    return tpu_devices(top)
  return gpu_devices(top, gpu_target_config)


def tpu_devices(top: Topology) -> list:
  if not libtpu_installed():
    raise TargetError(f"target {top.target} compiles with the TPU compiler, which comes "
                      f"with libtpu; it is not installed. Install it with:\n  {INSTALL_TPU}")
  _quiet_libtpu()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if version_of(top) in ("v4", "v5p"):
    kwargs["chip_config_name"] = "megacore"   # one device per chip, as jax shows them
  if top.wrap is not None:
    kwargs["wrap"] = top.wrap
  desc = topologies.get_topology_desc(
      platform="tpu", topology_name=f"{version_of(top)}:{top.shape}", **kwargs)
  if len(desc.devices) != top.chips:
    raise TargetError(f"libtpu described {len(desc.devices)} devices for {top.target}, "
                      f"expected {top.chips} (one per chip).")
  return list(desc.devices)


def gpu_devices(top: Topology, target_config: str = "") -> list:
  """Compile-only CUDA devices for a GPU node, from a GPU target config file.

  jax's CUDA plugin (`jax[cuda12]`, same version as jaxlib) can describe a
  GPU topology without a GPU when given the target's device description (a
  text `GpuTargetConfigProto`: compute capability, cores, shared memory, ...),
  which `evejax/tools/gpu_target_config.py` dumps on a GPU host.
  """
  if not target_config:
    raise TargetError(
        f"target {top.target}: compiling for a GPU without one needs its target config "
        "(--gpu_target_config=FILE, dumped on a GPU host with the same jaxlib by "
        "`python -m evejax.tools.gpu_target_config --out FILE`) and jax's CUDA plugin "
        "(pip install 'jax[cuda12]' with the pinned jax). See BENCHMARKS.md, 'TPU compiler "
        "plans', for what was possible on the CPU machines this was written on.")
  if importlib.util.find_spec("jax_plugins") is None or not any(
      importlib.util.find_spec(f"jax_plugins.{m}") for m in ("xla_cuda12", "xla_cuda13")):
    raise TargetError(f"target {top.target}: jax's CUDA plugin is not installed "
                      "(pip install 'jax[cuda12]' with the pinned jax version).")
  with open(target_config) as f:
    text = f.read()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(platform="cuda", topology_name=top.name,
                                        target_config=text, topology=f"1x1x{top.chips}")
  except Exception as e:  # pylint: disable=broad-except
    raise TargetError(f"target {top.target}: jax's CUDA plugin refused the compile-only "
                      f"topology ({type(e).__name__}: {e}).") from None
  return list(desc.devices)
