r"""Evaluation: score a checkpoint on benchmark files (evejax/eval).

One benchmark with its paper's profile, or one paper's profile on the benchmarks it reports:
  python -m evejax.eval --config configs/eval.py:mmstar \
      --config.init.hf_dir=/models/Qwen2.5-VL-7B-Instruct \
      --config.eval.data_dir=/data/LMUData --workdir /scratch/eval/mmstar
  python -m evejax.eval --config configs/eval.py:evolmm \
      --config.init.workdir=workdirs/evolmm_7b --config.eval.data_dir=/data --workdir OUT

Presets: a benchmark (mathvista, mmstar, hallusion, chartqa, ai2d, mmmu) with the profile
of the paper that reported it, a profile (eve, evolmm, mmzero) with its paper's
benchmarks, and `tiny` (the random tiny model on small buckets, for tests). Any value
can be overridden: --config.eval.profile=mmzero --config.eval.limit=100.
A judge model for what the rules leave undecided (the papers used an LLM):
  --config.eval.judge.hf_dir=/models/Qwen2.5-VL-7B-Instruct
Files are local: eval.data_dir/<Name>.tsv (VLMEvalKit), <Name>/ or <Name>.parquet
(HF datasets), or <Name>.jsonl + images; a missing one fails before the model loads.

The 7B model fits a TPU v5p-8 slice (fsdp=4) per the TPU compiler: the largest
chunk (8 prompts of 18432 tokens, 65536 patches, 8192 new tokens) decodes in
34 GiB of 95 per chip (BENCHMARKS.md, "TPU compiler plans"):
  python -m evejax.tools.aot_compile --config configs/eval.py --target tpu:v5p-8 --largest
"""
import ml_collections

from evejax import config_utils as cu
from evejax.eval import judge as judge_lib

# The benchmarks each paper reports, among those scored by rules (reference/EVALUATION.md).
PAPER_BENCHMARKS = {
    "eve": ("mmstar", "hallusion", "mathvista"),
    "evolmm": ("chartqa", "mathvista", "ai2d", "mmmu"),
    "mmzero": ("mathvista", "hallusion", "mmmu", "chartqa"),
}
# The profile of the paper whose numbers a benchmark preset reproduces.
BENCHMARK_PROFILE = {"mmstar": "eve", "hallusion": "eve", "mathvista": "eve",
                     "chartqa": "evolmm", "ai2d": "evolmm", "mmmu": "evolmm"}


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = cu.model("qwen2_5_vl_7b", dtype="bfloat16", param_dtype="bfloat16")
  c.init = cu.init()
  c.init.workdir = ""       # an evejax run directory: evaluate its latest checkpoint
  c.init.role = "solver"    # whose params (a key of the saved state)
  c.init.step = 0           # 0 = the latest committed step
  c.mesh = cu.mesh()
  c.processing = ml_collections.ConfigDict(dict(
      # EVE's Qwen2.5-VL pixels (1280..16384 x 28^2 per image) make 5120..65536
      # patches and 1280..16384 image tokens; prompts over the largest bucket are
      # counted as prompt_too_long, never truncated.
      length_buckets=(2048, 4096, 8192, 18432),
      patch_buckets=(8192, 16384, 32768, 65536),
      batch_buckets=(8,),   # prompts per generate chunk (a multiple of the batch shards)
  ))
  c.eval = ml_collections.ConfigDict(dict(
      benchmarks=("mmstar",),  # names in evejax.eval.benchmarks.BENCHMARKS
      profile="eve",           # eve | evolmm | mmzero (evejax.eval.profiles)
      data_dir="",             # where <Name>.tsv / <Name>/ / <Name>.jsonl live
      path="",                 # one benchmark's file, overriding data_dir
      split="",                # "" = the benchmark's (testmini, test, validation, ...)
      image_dir="",            # JSONL image paths are relative to this ("" = the file's folder)
      limit=0,                 # only the first N items (0 = all)
      chunk_size=64,           # items per generate call (and per resume unit)
      max_new_tokens=0,        # 0 = the profile's (per benchmark)
      min_pixels=0, max_pixels=0,  # 0 = the profile's
  ))
  # The judge of what the rules leave undecided (every item under mmzero):
  # judge.hf_dir = a local checkpoint evejax loads; judge.fn = 'pkg.mod:fn' instead.
  c.eval.judge = judge_lib.config_block()
  c.log = ml_collections.ConfigDict(dict(progress=True))
  return c


def _benchmark(name: str):
  def preset() -> ml_collections.ConfigDict:
    c = _base()
    c.eval.benchmarks = (name,)
    c.eval.profile = BENCHMARK_PROFILE[name]
    return c
  return preset


def _profile(name: str):
  def preset() -> ml_collections.ConfigDict:
    c = _base()
    c.eval.profile = name
    c.eval.benchmarks = PAPER_BENCHMARKS[name]
    return c
  return preset


def tiny() -> ml_collections.ConfigDict:
  """The random tiny model (built-in tokenizer) on small images and buckets: CPU tests."""
  c = _base()
  c.model = cu.model("tiny")
  c.processing.length_buckets = (128, 256)
  c.processing.patch_buckets = (64, 128)
  c.eval.max_new_tokens = 8
  c.eval.min_pixels = 56 * 56
  c.eval.max_pixels = 112 * 112
  c.eval.chunk_size = 8
  return c


PRESETS = {"tiny": tiny,
           **{name: _benchmark(name) for name in BENCHMARK_PROFILE},
           **{name: _profile(name) for name in PAPER_BENCHMARKS}}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return cu.select_preset(arg, PRESETS, default="mmstar")
