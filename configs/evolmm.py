r"""EvoLMM: a Proposer and a Solver as two LoRA adapters on one frozen backbone.

Run (tiny model from scratch, built-in scenes, CPU, a few minutes on 2 cores):
  python -m evejax.main --config configs/evolmm.py:tiny --workdir workdirs/evolmm_tiny

The published setup (Qwen2.5-VL-7B-Instruct, LoRA r 16):
  python -m evejax.main --config configs/evolmm.py:qwen2_5_vl_7b \
      --config.init.hf_dir=/path/to/Qwen2.5-VL-7B-Instruct \
      --config.data.kind=folder --config.data.path=/images --workdir /scratch/evolmm_7b

Batched updates for pods: --config.evolmm.update_rule=grpo --config.train.algorithm=grpo.
Defaults follow reference/METHODS.md (EvoLMM section); every number is here.
"""
import ml_collections

from evejax import config_utils as cu
from evejax.eval import validation
from evejax.models import lora


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.recipe = "evolmm"
  c.seed = 0
  c.model = cu.model("qwen2_5_vl_7b", dtype="bfloat16", param_dtype="float32", remat=True)
  c.init = cu.init()
  c.mesh = cu.mesh()
  c.decoding = cu.decoding()
  # Raw images for the Proposer: builtin | folder | jsonl | tfds | scenes (procedural
  # scenes whose held-out questions have known answers).
  c.data = ml_collections.ConfigDict(dict(
      kind="builtin", path="", name="", split="train", data_dir="",
      size=448, num_images=4096, min_pixels=56 * 56, max_pixels=448 * 448))
  c.processing = ml_collections.ConfigDict(dict(
      length_buckets=(1024, 2048), patch_buckets=(1024, 2048), batch_buckets=(8, 16)))
  c.evolmm = ml_collections.ConfigDict(dict(
      update_rule="sequential",   # sequential (published: REINFORCE per sample) | grpo
      reward="continuous",        # continuous self-consistency | majority (the baseline)
                                  # | constant (the experiments' control: no signal)
                                  # | shuffled (each group's rewards in random order)
      iterations=10,              # evaluation points; steps = iterations x steps_per_iteration
      steps_per_iteration=1618,   # 16,180 published steps
      images_per_step=1,          # B (grpo mode: several)
      proposer_group=1,           # questions per image (grpo mode: a group)
      samples=5,                  # N Solver answers per question
      proposer_every=5,           # a Proposer update every 5th step
      gamma=0.7, length_penalty=0.1, tau=6.0,   # gamma, lambda, tau of r_i (Solver)
      mu=0.9, sigma=0.35,                       # mu, sigma of r_q's entropy band-pass
      fallback_question="What is shown in this image?",   # no <question> tag (counted)
      style="full",               # prompt wording: "full" or "compact" (tiny models)
      heldout_questions=128,      # ground-truth scene questions the Solver is scored on
      # >0: also N answers per held-out question at T: one sample's accuracy vs
      # their majority's (self-consistency can only help where the majority is better).
      heldout_samples=0,
      # Built-in scenes (data.kind="scenes"): shapes per scene (0: 2-5), their
      # layout (grid x grid cells, shapes sized to a cell: 2 draws them larger) and
      # the question templates the warm start and the held-out set ask (empty: all).
      scene_shapes=0,
      scene_grid=3,
      scene_templates=(),
      # What counts as an answer: "tag_or_line" (published: <answer>...</answer>, else
      # the last non-empty line) or "tag" (a closed tag only; else no answer, reward 0).
      answer_format="tag_or_line",
      # Whose questions the Solver answers: "proposer" (the method) or "scenes" (built-in
      # template questions of fresh train scenes, no Proposer: the Solver's consistency
      # rewards alone, an ablation; needs data.kind="scenes").
      questions="proposer",
  ))
  c.sampling = ml_collections.ConfigDict(dict(
      proposer=dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=128),
      solver=dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=128),
  ))
  c.train = cu.grpo(lr=1e-6, kl_coef=0.0)
  c.train.algorithm = "reinforce"
  c.train.reinforce = dict(agg="seq-mean-token-mean", baseline_momentum=0.9, kl_beta=1e-3,
                           kl_target=0.02, kl_rate=0.1, kl_beta_min=1e-8, kl_beta_max=100.0)
  c.train.lora.update(rank=16, alpha=32.0, dropout=0.05, targets=(lora.TEXT_PROJECTIONS,))
  c.sandbox = cu.sandbox(workers=1)   # unused: EvoLMM runs no programs
  c.checkpoint = cu.checkpoint(every=100, keep=3)
  c.warmstart = ml_collections.ConfigDict(dict(
      enabled=False, steps=0, batch_size=16, lr=1e-3, schedule="cosine", warmup_steps=5))
  c.validation = validation.config_block(profile="evolmm")   # off; --config.validation.benchmark=
  c.log = ml_collections.ConfigDict(dict(tensorboard=True, gallery_tasks=24, progress=True))
  return c


def tiny() -> ml_collections.ConfigDict:
  """EvoLMM's loop on a 2-core CPU with a tiny VLM trained from scratch.

  For: seeing both adapters learn from self-consistency alone, with the
  held-out ground-truth accuracy before and after (BENCHMARKS.md, "EvoLMM tiny
  preset"). No pretrained model reaches such a machine, so the backbone itself
  is first warm started by SFT on built-in scene questions (to ask and to
  answer); the two adapters then start on it, and it is their KL reference.
  It runs the batched `grpo` update (4 images, 2 questions each, 5 answers),
  because the published per-sample REINFORCE moves a model this small too
  little to see in minutes; compact prompts, short replies, a larger learning
  rate, and built-in scenes as the images.
  """
  c = _base()
  c.model = cu.model("tiny")
  c.data.update(kind="scenes", size=112, num_images=512, min_pixels=56 * 56,
                max_pixels=112 * 112)
  c.processing.update(length_buckets=(128,), patch_buckets=(64,), batch_buckets=(8,))
  c.evolmm.update(iterations=4, steps_per_iteration=20, style="compact", heldout_questions=96,
                  images_per_step=4, proposer_group=2, proposer_every=1, update_rule="grpo")
  c.train.algorithm = "grpo"
  c.train.loss.kl_coef = 0.05   # against the base; at 0.01 answers collapse to one
  c.sampling.proposer.max_new_tokens = 32
  c.sampling.solver.max_new_tokens = 12
  c.train.optimizer.lr = 5e-4
  c.train.lora.update(rank=8, alpha=16.0, dropout=0.0)
  c.checkpoint = cu.checkpoint(every=10, keep=2)
  c.warmstart.update(enabled=True, steps=120, batch_size=16, lr=3e-3, schedule="constant",
                     warmup_steps=0)
  return c


def small() -> ml_collections.ConfigDict:
  """The tiny preset with the measurement a controlled experiment needs.

  For: the method against its control over seeds (`python -m
  evejax.tools.experiment`, BENCHMARKS.md "Learning fidelity"). Every
  evaluation also samples 5 answers per held-out question at the Solver's
  temperature: self-consistency rewards can raise accuracy only where the
  majority of those answers is right more often than one of them.

  What it shows at this scale (BENCHMARKS.md, "Learning fidelity", 3 seeds):
  the warm-started Solver's greedy answer to a question text is the same
  whatever the image (answer variety stays at its floor), so its 37% is a
  language prior, and the majority of 5 beats one sample by only 4 points.
  Rewarding agreement then sharpens that prior: the published answer rule
  (a tag, else the last line) also rewards unanimous malformed replies, and
  held-out accuracy falls 11 points against the constant-reward control; with
  a closed tag required (arm `tag_only`) it falls 3 while a sample's accuracy
  rises 3.5 points toward the majority's. Image-grounded gains need a Solver
  that reads the image, which this model does not learn in these scenes: a
  shape covers about one image token (`grounded` is the world where it does).
  """
  c = tiny()
  c.evolmm.heldout_samples = 5
  return c


def grounded() -> ml_collections.ConfigDict:
  """`small` in a world where the tiny Solver reads the image.

  For: the method against its control where the precondition holds
  (BENCHMARKS.md, "Learning fidelity"). In `small`'s scenes a shape covers about
  one 28-pixel token of the 112-pixel image, and a from-scratch warm start of
  120 steps at 3e-3 learns a language prior: the image embeddings grow a large
  constant part that drowns the few tokens a shape changes. Here each scene has
  one shape drawn in a 2 x 2 layout (twice as large), the questions ask its
  colour or its kind, and the warm start runs 1000 steps at 1e-3: it stops
  while the Solver is learning colours from the image (seed 0: 32% of colour
  questions right, answer variety above its floor), so that a sample is often
  wrong where the majority of 5 is right (26% vs 34%). By 1400 steps colours
  are solved (98%) and kinds still at chance, and nothing is left to amplify.

  What it shows (BENCHMARKS.md, "Learning fidelity", 3 seeds): the
  precondition holds (answer variety 0.52 over a floor of 0.31, the majority
  of 5 +5 points over a sample), yet the method ends 14 points below the
  constant-reward control: rewarding agreement on the Proposer's questions
  (mostly kinds, where the Solver is at chance) teaches one answer per
  question text and erodes the colour grounding. The Solver alone on template
  questions (arm `solver_only`) falls 6 points, and rises on one seed. A
  re-run with other warm starts (3ead671) does not reproduce the fall: the
  method +0.3 points while held-out consistency rises 0.62 -> 0.67, and the
  same rewards shuffled within each group (arm `shuffled`) change neither.
  """
  c = small()
  c.evolmm.update(scene_grid=2, scene_shapes=1, scene_templates=("color_of_kind",
                                                                 "kind_of_color"))
  c.warmstart.update(steps=1000, lr=1e-3)
  return c


def qwen2_5_vl_7b() -> ml_collections.ConfigDict:
  """The published setup: Qwen2.5-VL-7B-Instruct with two LoRA adapters.

  Fits a TPU v5p-8 slice (4 chips, `mesh.fsdp=-1` = 4) per the TPU compiler:
  every program compiles, the largest (each adapter's REINFORCE step) at 25.5
  GiB of 95 per chip (BENCHMARKS.md, "TPU compiler plans"):
    python -m evejax.tools.aot_compile --config configs/evolmm.py:qwen2_5_vl_7b \
        --target tpu:v5p-8 --largest
  """
  return _base()


def qwen3_vl_8b() -> ml_collections.ConfigDict:
  c = _base()
  c.model = cu.model("qwen3_vl_8b", dtype="bfloat16", param_dtype="float32", remat=True)
  return c


def qwen3_5_9b() -> ml_collections.ConfigDict:
  """Qwen3.5-9B with the published LoRA (r 16 on q, k, v, o, gate, up, down:
  on Qwen3.5 the 8 attention layers' projections and every MLP, as PEFT's
  target_modules of those names adapt; add lora.LINEAR_ATTENTION_PROJECTIONS
  to adapt the DeltaNet layers too). One backbone, two adapters: its plan is
  39.9 GiB per device on fsdp=8, so 8 x H100 (BENCHMARKS.md, "Memory plans")."""
  c = _base()
  c.model = cu.model("qwen3_5_9b", dtype="bfloat16", param_dtype="float32", remat=True)
  return c


# Arms of `python -m evejax.tools.experiment` (BENCHMARKS.md, "Learning fidelity"):
# named overrides on a preset; the arms of a seed start from one shared warm start.
ARMS = {
    # The method: continuous self-consistency rewards the Solver, entropy the Proposer.
    "method": {},
    # The same steps and compute with a constant reward: no signal reaches either role.
    "control": {"evolmm.reward": "constant"},
    # The method's rewards shuffled within each group: its update sizes and noise,
    # no signal (does the method's fall come from what it rewards, or from updating?).
    "shuffled": {"evolmm.reward": "shuffled"},
    # The paper's baseline: 1 for the majority answer, else 0.
    "majority": {"evolmm.reward": "majority"},
    # The method where only a closed <answer> tag is an answer: a tiny Solver
    # otherwise agrees with itself on malformed replies (a lone "<answer>").
    "tag_only": {"evolmm.answer_format": "tag"},
    # The Solver's half alone: consistency rewards on built-in scene questions, no
    # Proposer (which otherwise steers the questions to where the Solver is unsure).
    "solver_only": {"evolmm.questions": "scenes"},
}
# Beside held-out greedy accuracy: what a sample and the majority of N reach, how far
# the answers agree, whether they still depend on the image, and the training batches'.
EXPERIMENT_METRICS = ("eval/heldout_sample_accuracy", "eval/heldout_majority_accuracy",
                      "eval/heldout_consistency", "eval/heldout_distinct_answers",
                      "eval/heldout_answer_variety", "evolmm/consistency",
                      "evolmm/distinct_answers")

PRESETS = {"tiny": tiny, "small": small, "grounded": grounded, "qwen2_5_vl_7b": qwen2_5_vl_7b,
           "qwen3_vl_8b": qwen3_vl_8b, "qwen3_5_9b": qwen3_5_9b}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return cu.select_preset(arg, PRESETS, default="tiny")
