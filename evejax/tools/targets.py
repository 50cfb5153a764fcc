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
  gpu:<node>    compile-only CUDA devices (h100x8, h200x8, a100x8, ...) from a
                GPU target config (a text `GpuTargetConfigProto`: built in
                for those GPUs, or `--gpu_target_config=FILE` dumped on a GPU
                host) through jax's CUDA plugin, which must be installed (no
                GPU, driver or CUDA library is needed); see `gpu_devices`.

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


def parse_mesh(spec: str) -> dict[str, int]:
  """'fsdp=8' or 'data=2,fsdp=4' -> {'fsdp': 8} (a --mesh flag)."""
  out = {}
  for part in filter(None, spec.split(",")):
    name, _, size = part.partition("=")
    if not size.lstrip("-").isdigit():
      raise TargetError(f"--mesh part {part!r}: use axis=size, e.g. fsdp=8.")
    out[name.strip()] = int(size)
  return out


def program_bytes(stats) -> int:
  """Arguments + outputs (minus donated aliases) + temporaries of a compiled program.

  XLA packs all temporaries into one buffer sized for the most alive at once,
  so this is the program's high-water mark. (The CPU's peak_memory_in_bytes
  leaves temporaries out, so it is not used.)
  """
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


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
  """v5p for v5p-16, h100x8 for h100x8."""
  return top.name.split("-")[0]


def libtpu_installed() -> bool:
  return importlib.util.find_spec("libtpu") is not None


INSTALL_TPU = ("pip install -e '.[tpu]' -c constraints.txt   (x86_64 Linux: the libtpu "
               "that the pinned jax needs; no TPU is used)")


def _quiet_libtpu() -> None:
  """No TPU metadata server to ask on a host without TPUs, and no lock on chips
  there are none of: libtpu's lockfile (/tmp/libtpu_lockfile) would refuse a
  second compiling process ("Internal error when accessing libtpu multi-process
  lockfile")."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


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


# What XLA's GPU compiler needs to know of a GPU it compiles for without one
# (a `GpuTargetConfigProto`'s device description): CUDA deviceQuery facts of
# the SXM parts (compute capability, SMs, shared memory and registers per SM
# and block, L2, clock, usable memory), and the cuDNN / CUDA versions the
# jax-cuda12 plugin is built with. `gpu_target_config.py` writes the same
# description from a real GPU on a lent host; --gpu_target_config takes it.
GPU_DEVICES = {
    "h100": dict(description="NVIDIA H100 80GB HBM3", capability=(9, 0), sms=132,
                 smem_per_sm=233472, smem_optin=232448, l2=50 * 2**20, clock_ghz=1.98,
                 memory=84929347584),
    "h200": dict(description="NVIDIA H200", capability=(9, 0), sms=132, smem_per_sm=233472,
                 smem_optin=232448, l2=60 * 2**20, clock_ghz=1.98, memory=150_000_000_000),
    "a100": dict(description="NVIDIA A100-SXM4-80GB", capability=(8, 0), sms=108,
                 smem_per_sm=167936, smem_optin=166912, l2=40 * 2**20, clock_ghz=1.41,
                 memory=85_100_000_000),
}


def gpu_target_config(chip_key: str, *, cudnn=(9, 8), cuda=(12, 8), **overrides) -> str:
  """The text GpuTargetConfigProto of a GPU in `GPU_DEVICES` (`overrides`: its keys,
  and smem_per_block, threads_per_sm, regs_per_sm, regs_per_block, bandwidth)."""
  d = dict(smem_per_block=49152, threads_per_sm=2048, regs_per_sm=65536,
           regs_per_block=65536, bandwidth=int(CHIPS[chip_key].hbm_bytes_per_s),
           **GPU_DEVICES[chip_key])
  d.update({k: v for k, v in overrides.items() if v is not None})
  major, minor = d["capability"]
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: {d["smem_per_block"]}
  shared_memory_per_core: {d["smem_per_sm"]}
  threads_per_core_limit: {d["threads_per_sm"]}
  core_count: {d["sms"]}
  fpus_per_core: {128 if major >= 8 else 64}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {d["bandwidth"]}
  l2_cache_size: {d["l2"]}
  clock_rate_ghz: {d["clock_ghz"]}
  device_memory_size: {d["memory"]}
  shared_memory_per_block_optin: {d["smem_optin"]}
  cuda_compute_capability {{
    major: {major}
    minor: {minor}
  }}
  registers_per_core_limit: {d["regs_per_sm"]}
  registers_per_block_limit: {d["regs_per_block"]}
}}
platform_name: "CUDA"
dnn_version_info {{
  major: {cudnn[0]}
  minor: {cudnn[1]}
}}
runtime_version {{
  major: {cuda[0]}
  minor: {cuda[1]}
}}
device_description_str: "{d["description"]}"
"""


def cuda_plugin_installed() -> bool:
  return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None


def gpu_devices(top: Topology, target_config: str = "") -> list:
  """Compile-only CUDA devices for a GPU node: no GPU, no driver, no CUDA libraries.

  jax's CUDA plugin (the jax-cuda12-plugin and jax-cuda12-pjrt wheels of the
  pinned jax) describes a GPU topology from a target config: the text
  `GpuTargetConfigProto` in `target_config` (a file), else the built-in one of
  the node's GPU. Of the nvidia-* library wheels only cuDNN's is needed (its
  flash attention is built on the host when lowering); measured with jax
  0.10.2 and nvidia-cudnn-cu12 9.28 on a CPU-only VM: the tiny presets' train
  steps (cuDNN attention forward and backward), prefill, decode and vision
  programs compile for gpu:h100x8.
  """
  if not cuda_plugin_installed():
    raise TargetError(
        f"target {top.target} compiles with XLA's GPU compiler, which comes with jax's CUDA "
        "plugin; it is not installed. Install the plugin of the pinned jax (no GPU or CUDA "
        "libraries needed to compile; cuDNN's wheel for cuDNN attention):\n  pip install "
        "--no-deps jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2 && pip install "
        "'nvidia-cudnn-cu12>=9.8,<10'\n(with the plugin installed, jax tries a CUDA backend "
        "whenever JAX_PLATFORMS is unset, and falls back to the CPU without a GPU).")
  key = version_of(top).split("x")[0]
  if target_config:
    with open(target_config) as f:
      text = f.read()
  elif key in GPU_DEVICES:
    text = gpu_target_config(key)
  else:
    raise TargetError(f"target {top.target}: no built-in GPU description; pass "
                      "--gpu_target_config=FILE (tools/gpu_target_config.py on a GPU host).")
  # Sharded autotuning needs the other hosts; autotuning needs a GPU.
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in ("--xla_gpu_shard_autotuning=false", "--xla_gpu_autotune_level=0"):
    if flag.split("=")[0] not in flags:
      flags += " " + flag
  os.environ["XLA_FLAGS"] = flags.strip()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(platform="cuda", topology_name=top.name,
                                        target_config=text, topology=f"1x1x{top.chips}")
  except Exception as e:  # pylint: disable=broad-except
    raise TargetError(f"target {top.target}: jax's CUDA plugin refused the compile-only "
                      f"topology ({type(e).__name__}: {e}).") from None
  return list(desc.devices)
