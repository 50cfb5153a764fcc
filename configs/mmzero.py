r"""MM-Zero: Proposer, Coder and Solver evolve from zero images through rendered SVG.

Run (tiny model from scratch, no images at all, CPU, about 10 minutes on 2 cores):
  python -m evejax.main --config configs/mmzero.py:tiny --workdir workdirs/mmzero_tiny

The published setup on a GPU node or TPU slice (Qwen3-VL-8B-Instruct):
  python -m evejax.main --config configs/mmzero.py:qwen3_vl_8b \
      --config.init.hf_dir=/path/to/Qwen3-VL-8B-Instruct --workdir /scratch/mmzero_8b

Any value can be overridden: --config.mmzero.iterations=6 --config.mmzero.backend=plot.
Defaults follow reference/METHODS.md (MM-Zero section); every number is here.
"""
import ml_collections

from evejax import config_utils as cu
from evejax.eval import validation


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.recipe = "mmzero"
  c.seed = 0
  c.model = cu.model("qwen3_vl_8b", dtype="bfloat16", param_dtype="float32", remat=True)
  c.init = cu.init()
  c.mesh = cu.mesh()
  c.decoding = cu.decoding()
  # Renders are resized into these pixel bounds before the Solver sees them.
  c.data = ml_collections.ConfigDict(dict(min_pixels=64 * 64, max_pixels=1024 * 1024))
  # Prompts are short (a topic; a proposal; a render and a question). Three
  # roles' train states stay resident: plan before raising the chunk size.
  c.processing = ml_collections.ConfigDict(dict(
      length_buckets=(1024, 2048),
      patch_buckets=(1024, 4096),
      batch_buckets=(8, 16),
  ))
  c.mmzero = ml_collections.ConfigDict(dict(
      iterations=6,                # I
      proposer_steps=20, coder_steps=20, solver_steps=20,   # GRPO steps per phase
      share_params=False,          # True: one set of weights plays all three roles
      backend="svg",               # svg (the published pipeline) | plot (plotting Python)
      style="full",                # prompt wording: "full" or "compact" (tiny models)
      topics=(),                   # () = the 8 built-in topics
      kinds=("bar_chart", "pie_chart", "line_chart", "table", "timeline", "right_triangle",
             "circles", "text_cards", "shape_count", "dot_sequence"),  # warm start, held out
      pipeline_chunks=4,           # static decoding: the sandbox renders chunk k while k+1 samples
                                   # (slot decoding hands each row over as it ends, unsplit)
      # Proposer phase: G proposals per topic prompt, N codes per proposal by the
      # frozen Coder, n answers per question by the frozen Solver (s and c).
      proposer_prompts=18, proposer_group=4, coder_samples=4, solver_samples=5,  # -, G, N, n
      # Coder phase: a pool of Proposer_i's proposals filtered by render success.
      coder_pool=720, coder_band=(0.25, 0.75), coder_prompts=32, coder_group=4,  # G_C = 4
      coder_scored_by_coder=False,  # the published code's "Solver" is the Coder's checkpoint
      # proposer: Proposer_i's proposals (the method) | library: warm-start library
      # train items, no Proposer evolution (the control arm and the Coder ablation).
      coder_proposals="proposer",
      # Solver phase: one render per proposal, answered 10 times by Solver_{i-1}.
      solver_pool=5000, solver_select_samples=10, solver_easy_min=0.5,
      solver_hard_band=(0.25, 0.75), solver_prompts=64, solver_group=8,  # G_S = 8
      heldout_items=64, heldout_coder_samples=4,   # evaluation on held-out library items
  ))
  c.reward = ml_collections.ConfigDict(dict(
      proposer=dict(unparseable=-1.0, solvability_cap=0.5, easy_threshold=0.15,
                    easy_penalty=0.3, diversity_weights=(0.45, 0.20, 0.35),
                    diversity_budget=0.5, diversity_threshold=0.25,
                    content_type_weight=0.15, content_type_threshold=0.5),
      coder=dict(no_render=0.1, empty=0.05, non_svg=0.5, floor=-0.5,
                 render_only=False),   # True: 1 if it renders (no s, c): an ablation
      solver=dict(accuracy=0.9, format=0.1),
  ))
  c.sampling = ml_collections.ConfigDict(dict(
      proposer=dict(temperature=1.0, top_p=0.99, top_k=0, max_new_tokens=1024),
      coder=dict(temperature=0.7, top_p=0.95, top_k=0, max_new_tokens=4096),
      solver=dict(temperature=1.0, top_p=0.99, top_k=0, max_new_tokens=2048),
  ))
  # Up to 512 Solver rows of 2048 tokens per step: 8 micro-batches keep about
  # 8192 tokens per device per micro-batch on 16 devices (BENCHMARKS.md, "TPU
  # compiler plans").
  c.train = cu.grpo(lr=1e-6, kl_coef=0.01, clip_high=0.3, micro_batches=8)
  # Sandbox: SVG renders take a 30 s budget in the published pool.
  c.sandbox = cu.sandbox(workers=16, timeout_s=30.0)
  c.checks = ml_collections.ConfigDict(dict(max_side=16384, max_aspect=100.0))
  c.checkpoint = cu.checkpoint(every=5, keep=3)
  c.warmstart = ml_collections.ConfigDict(dict(
      enabled=False, proposer_steps=0, coder_steps=0, solver_steps=0,
      batch_size=16,               # SFT rows per step
      lr=1e-3, proposer_lr=0.0, coder_lr=0.0, solver_lr=0.0,   # 0: lr
      schedule="cosine", warmup_steps=5,
  ))
  # In-loop validation of the Solver, off by default (--config.validation.benchmark=...).
  c.validation = validation.config_block(profile="mmzero")
  c.log = ml_collections.ConfigDict(dict(tensorboard=True, gallery_tasks=24, progress=True))
  return c


def tiny() -> ml_collections.ConfigDict:
  """All three phases on a 2-core CPU with a tiny VLM trained from scratch.

  For: seeing the whole method run (proposals, rendered SVG, consistency,
  the Coder and Solver filters, three GRPO phases, the co-evolution chart).
  No pretrained model reaches such a machine, so the three roles are warm
  started by SFT on the built-in library of procedural proposals with matching
  SVG, the Coder's warm start kept short so that its GRPO phase has room to
  raise its render success; compact prompts, small batches and pools, short
  replies, larger learning rates and no KL term.
  """
  c = _base()
  c.model = cu.model("tiny")
  c.data.update(min_pixels=28 * 28, max_pixels=112 * 112)
  c.processing.update(length_buckets=(256, 512), patch_buckets=(64,), batch_buckets=(8, 16))
  c.mmzero.update(dict(
      iterations=2, proposer_steps=2, coder_steps=10, solver_steps=2, style="compact",
      kinds=("bar_chart", "pie_chart", "timeline", "right_triangle", "circles", "text_cards",
             "shape_count"),
      pipeline_chunks=2,
      proposer_prompts=4, proposer_group=4, coder_samples=4, solver_samples=3,
      coder_pool=32, coder_prompts=4, coder_group=4,
      solver_pool=16, solver_select_samples=4, solver_prompts=4, solver_group=4,
      heldout_items=28, heldout_coder_samples=2))
  c.sampling.proposer.max_new_tokens = 160
  c.sampling.coder.max_new_tokens = 320
  c.sampling.solver.max_new_tokens = 64
  # Larger GRPO steps (5e-4) collapse the Coder's render success to 0.
  c.train = cu.grpo(lr=3e-4, kl_coef=0.0, clip_high=0.3)
  c.sandbox = cu.sandbox(workers=2, timeout_s=10.0)
  c.checkpoint = cu.checkpoint(every=10, keep=2)
  # The Coder's warm start stops where a fifth to a third of its held-out SVGs
  # render, so that its GRPO phase has room (150 steps: over 90%).
  c.warmstart.update(dict(enabled=True, proposer_steps=250, coder_steps=90, solver_steps=150,
                          batch_size=8, lr=3e-3, schedule="constant", warmup_steps=0))
  c.log.gallery_tasks = 12
  return c


def small() -> ml_collections.ConfigDict:
  """The tiny preset sized for controlled experiments (`python -m evejax.tools.experiment`).

  For: the method against its control over seeds (BENCHMARKS.md, "Learning
  fidelity"). The Coder phase takes 14 proposals x 4 codes per GRPO step: with
  the tiny preset's 4 x 4 most groups are all failures, and Adam's steps
  (every weight moves by about lr whatever the signal) raise the Coder's
  entropy until nothing renders, even with render success as its only reward
  and fixed proposals; 14 x 4 on the same learner raises it (BENCHMARKS.md).
  Larger pools feed that batch; 4 held-out codes per item halve the
  evaluation's noise.
  """
  c = tiny()
  c.mmzero.update(dict(coder_steps=8, coder_prompts=14, coder_pool=48, heldout_coder_samples=4))
  return c


def qwen3_vl_8b() -> ml_collections.ConfigDict:
  """The published default on 16 devices: two 8 x H100 nodes, or a TPU v5p-32 slice.

  Fits v5p-32 (16 chips, `mesh.fsdp=-1` = 16) per the TPU compiler: the
  Solver's GRPO step, the largest program, peaks at 49 GiB of 95 per chip with
  all three roles' states resident (BENCHMARKS.md, "TPU compiler plans"):
    python -m evejax.tools.aot_compile --config configs/mmzero.py:qwen3_vl_8b \
        --target tpu:v5p-32 --largest
  """
  c = _base()
  # Sampling chunks are split over all 16 devices: buckets are multiples of 16.
  c.processing.batch_buckets = (16,)
  return c


def qwen3_vl_4b() -> ml_collections.ConfigDict:
  """Qwen3-VL-4B in the published setup. Fits a TPU v5p-16 slice (8 chips,
  `mesh.fsdp=-1` = 8) per the TPU compiler: the Solver's GRPO step peaks at
  62.6 GiB of 95 per chip and the Coder's decode chunk at 62.2, with every
  role's state resident; on v5p-8 both exceed the chip (BENCHMARKS.md, "TPU
  compiler plans"):
    python -m evejax.tools.aot_compile --config configs/mmzero.py:qwen3_vl_4b \
        --target tpu:v5p-16 --largest
  """
  c = _base()
  c.model = cu.model("qwen3_vl_4b", dtype="bfloat16", param_dtype="float32", remat=True)
  return c


def qwen2_5_vl_7b() -> ml_collections.ConfigDict:
  c = _base()
  c.model = cu.model("qwen2_5_vl_7b", dtype="bfloat16", param_dtype="float32", remat=True)
  return c


def qwen3_5_9b() -> ml_collections.ConfigDict:
  """Qwen3.5-9B in the published Qwen3-VL-8B setup (same hyperparameters; the
  Solver's <think>...</think> format is Qwen3.5's own tag). Three 9.4B roles
  plan at 107 GiB per device on fsdp=16 with 2048-token steps (BENCHMARKS.md,
  "Memory plans"): 16 x H200 (141 GB), not H100."""
  c = _base()
  c.model = cu.model("qwen3_5_9b", dtype="bfloat16", param_dtype="float32", remat=True)
  return c


# Arms of `python -m evejax.tools.experiment` (BENCHMARKS.md, "Learning fidelity"):
# named overrides on a preset; the arms of a seed start from one shared warm start.
ARMS = {
    # The method: Proposer, Coder and Solver co-evolve.
    "method": {},
    # Static data: the Coder gets the same GRPO steps on warm-start library
    # proposals, with the same reward; the Proposer does not evolve.
    "control": {"mmzero.coder_proposals": "library", "mmzero.proposer_steps": 0},
    # The Coder alone on library proposals, rewarded only for rendering: if this
    # does not raise held-out render success, the learner or the reward path is broken.
    "coder_only": {"mmzero.coder_proposals": "library", "reward.coder.render_only": True,
                   "mmzero.proposer_steps": 0, "mmzero.solver_steps": 0},
}
# What the experiment table shows per iteration beside the Coder's held-out renders.
EXPERIMENT_METRICS = ("eval/solver_accuracy", "eval/proposer_parse_rate",
                      "coevolution/render_success", "coevolution/solvability",
                      "coevolution/difficulty", "coevolution/coder_data",
                      "coder/reward/rendered")

PRESETS = {"tiny": tiny, "small": small, "qwen3_vl_8b": qwen3_vl_8b,
           "qwen3_vl_4b": qwen3_vl_4b, "qwen2_5_vl_7b": qwen2_5_vl_7b,
           "qwen3_5_9b": qwen3_5_9b}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return cu.select_preset(arg, PRESETS, default="tiny")
