r"""EVE: Challenger-Solver self-evolution through executable image transformations.

Run (tiny model from scratch, built-in images, CPU, about 8 minutes on 2 cores):
  python -m evejax.main --config configs/eve.py:tiny --workdir workdirs/eve_tiny

A released checkpoint on a GPU node or TPU slice (published hyperparameters):
  python -m evejax.main --config configs/eve.py:qwen2_5_vl_7b \
      --config.init.hf_dir=/path/to/Qwen2.5-VL-7B-Instruct --workdir gs://.../eve_7b

Any value can be overridden: --config.eve.iterations=2 --config.mesh.tensor=4.
Defaults follow reference/METHODS.md (EVE section); every number is here.
"""
import ml_collections

from evejax import config_utils as cu
from evejax.eval import validation


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.recipe = "eve"
  c.seed = 0
  c.model = cu.model("qwen2_5_vl_7b", dtype="bfloat16", param_dtype="float32", remat=True)
  c.init = cu.init()
  c.mesh = cu.mesh()
  c.decoding = cu.decoding()

  # Source images for the Challenger (half of Vision-SR1-47K in the paper).
  c.data = ml_collections.ConfigDict(dict(
      kind="builtin",       # builtin | folder | jsonl | tfds
      path="",              # folder or .jsonl manifest
      name="", split="train", data_dir="",   # tfds
      size=448,             # builtin scenes: side in pixels
      num_images=4096,      # builtin scenes: how many distinct seeds
      min_pixels=56 * 56,
      max_pixels=448 * 448,  # caps host RAM and image tokens per image
  ))
  c.processing = ml_collections.ConfigDict(dict(
      length_buckets=(1024, 2048, 4096, 8192),
      patch_buckets=(1024, 2048, 4096, 8192),
      # Prompts per generate chunk (x G rows decode together). 16 x G=8 rows,
      # 4096 + 4096 tokens, plan at 49 GiB per device on 8 devices for 7B
      # with the train state resident; 128 prompts would need 247 GiB:
      #   python -m evejax.tools.plan_memory --config configs/eve.py:qwen2_5_vl_7b \
      #       --mesh fsdp=8 --seq 4096 [--sample_prompts 128]
      batch_buckets=(8, 16),
  ))

  c.eve = ml_collections.ConfigDict(dict(
      iterations=5,                # I
      challenger_steps=10,         # GRPO steps of a Challenger phase
      solver_steps=10,             # GRPO steps of a Solver phase
      share_params=False,          # True: one set of weights plays both roles
      challenger_prompts=128,      # prompts per Challenger step
      challenger_group=4,          # G_C: programs per prompt
      solver_prompts=128,          # questions per Solver step
      solver_group=8,              # G_S: replies per question
      solver_lr=0.0,               # the Solver's GRPO learning rate (0: train.optimizer.lr)
      difficulty_samples=6,        # S: frozen-Solver answers per question (p_q)
      question_types=(0, 1),       # type 2 is implemented, off by default
      type2_partial_credit=True,   # type 2 graded per matched position (else all or nothing)
      # shuffled (the paper) | sorted: options in the arguments' text order, so a
      # fixed palette gives each value a fixed letter (eve_tasks.OPTION_ORDERS)
      option_order="shuffled",
      num_args=4,                  # |args_list|
      # The transformation families: builtin (the paper's kinds of edit) or a library
      # "pkg.mod:attr" that replaces them; `transforms` adds families to either.
      library="builtin",
      transforms="",               # extra transformation library "pkg.mod:attr"
      heldout_families=(),         # never shown to the Challenger (() = the builtin three)
      seed_families=(),            # the queue's never-evicted seeds (() = the paper's four)
      heldout_eval_questions=256,  # Solver accuracy on held-out families
      train_family_eval_questions=0,   # >0: also on the warm-start families (fresh images)
      # Solver phase questions: challenger (logged in the Challenger phase, the method)
      # | library (the static warm-start library's families: the experiments' control).
      solver_questions="challenger",
      pipeline_chunks=4,           # static decoding: sandbox runs chunk i while chunk i+1 samples
                                   # (slot decoding hands each row over as it ends, unsplit)
      instructions="full",         # Challenger prompt: "full" rules or "compact"
      # The published code's conventions per family: Qwen2.5-VL absolute pixels
      # and <think>; Qwen3-VL relative 0-1000 coordinates and <thinking>.
      coordinates="absolute",      # absolute | relative
      think_tag="think",           # think | thinking
  ))
  c.queue = ml_collections.ConfigDict(dict(
      capacity=50,                 # top-K by difficulty, seeds never evicted
      min_difficulty=0.5,          # strictly greater: pass rate in (0.25, 0.75)
      max_function_chars=2000,     # also a validity check and a rule in the prompt
      max_comments=2,              # comment markers; more also zero the format reward
      bleu_threshold=0.25,         # near-duplicate if sentence-BLEU exceeds this
      examples_per_prompt=(1, 2),  # each half the time
  ))
  c.reward = ml_collections.ConfigDict(dict(
      format=0.2, validity=0.4, difficulty=0.4, diversity=0.3,   # R_C weights of f, v, d, c_hat
      difficulty_quirk=False,      # published code: d = d1 when either p in [0.25, 1)
      diversity_tail_chars=1000, diversity_threshold=0.5,
      solver_format=0.2, solver_accuracy=0.8,   # R_S weights of fmt, acc
      extra=(),                    # extra reward fns by import path, added to R_C
  ))
  c.solver_data = ml_collections.ConfigDict(dict(
      log_min_pass=0.25, log_max_pass=1.0, keep=1280))
  # Validity of a program's outputs (evejax.sandbox.CheckConfig fields).
  c.checks = ml_collections.ConfigDict(dict(
      min_pixels=32 * 32, max_pixels=2_000_000, min_opaque_fraction=0.10,
      max_near_black_fraction=0.10, rotation_near_black_fraction=0.75,
      near_black_luma=5.0, distinct_size_ratio=0.95,
      reject_randomness=True, reject_file_saving=True))

  c.sampling = ml_collections.ConfigDict(dict(
      challenger=dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=4096),
      solver=dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=1024),
  ))
  # 512 Challenger rows (1,024 Solver rows) of 8192 tokens per step: 64
  # micro-batches keep one (two) rows per device per micro-batch on 8 devices,
  # which the TPU compiler fits (BENCHMARKS.md, "TPU compiler plans").
  c.train = cu.grpo(lr=1e-6, kl_coef=1e-3, micro_batches=64)
  c.sandbox = cu.sandbox(workers=16)
  c.checkpoint = cu.checkpoint(every=5, keep=3)
  c.warmstart = ml_collections.ConfigDict(dict(
      enabled=False, challenger_steps=0, solver_steps=0,
      batch_size=16,               # SFT rows per step (Solver: questions)
      lr=1e-3,
      schedule="cosine", warmup_steps=5,  # per role, over that role's steps
      solver_lr=0.0, solver_schedule="",  # the Solver's own (0 / "": as above)
      solver_batch_size=0,         # the Solver's rows per step (0: batch_size)
      # Text before the Solver's boxed answer; "rationale": each question's own
      # (eve_tasks.solver_reasoning: type 1 restates the matching arguments).
      solver_reasoning="The answer is",
      short_think=False,           # think block = the family's one-line description
      challenger_families=(),      # () = every family the Challenger may see
  ))
  # In-loop validation, off by default (the paper: 200 MMStar items every 5 steps):
  # --config.validation.benchmark=mmstar --config.validation.data_dir=/data/LMUData
  c.validation = validation.config_block(num_items=200, every=5, profile="eve")
  c.log = ml_collections.ConfigDict(dict(
      tensorboard=True,
      gallery_tasks=24,            # cards per iteration's HTML gallery
      progress=True))              # progress bars (and periodic progress log lines)
  return c


def tiny() -> ml_collections.ConfigDict:
  """The whole EVE loop on a 2-core CPU with a tiny VLM trained from scratch.

  For: seeing every part of the method run end to end on a laptop (sandbox,
  questions, difficulty, queue admission, both GRPO phases, resume, gallery);
  BENCHMARKS.md ("EVE tiny preset") has what it reaches. No pretrained model
  reaches such a machine, so it departs from the paper where a random 2-layer
  model needs it: an SFT warm start of both roles on the built-in library (the
  Challenger on two short families far from the seeds, roll and spotlight, so
  that its programs can enter the queue), compact instructions with one queue
  example, Challenger sampling at T=0.7 (at T=1 most of its programs do not
  parse), short Solver replies, small batches, larger learning rates and no
  KL term.
  """
  c = _base()
  c.model = cu.model("tiny")
  c.data.size = 112
  c.data.num_images = 256
  c.data.max_pixels = 112 * 112
  c.processing.length_buckets = (512, 768)
  c.processing.patch_buckets = (64, 128, 320)
  c.processing.batch_buckets = (8, 16, 32)
  c.eve.iterations = 2
  c.eve.challenger_steps = 3
  c.eve.solver_steps = 4
  c.eve.challenger_prompts = 4
  c.eve.challenger_group = 4
  c.eve.solver_prompts = 8
  c.eve.solver_group = 4
  c.eve.difficulty_samples = 6
  c.eve.heldout_eval_questions = 48
  c.eve.instructions = "compact"
  c.eve.pipeline_chunks = 2
  c.queue.examples_per_prompt = (1,)
  c.solver_data.keep = 64
  c.sampling.challenger.max_new_tokens = 384
  c.sampling.solver.max_new_tokens = 16
  # Larger GRPO steps undo the warm starts (BENCHMARKS.md).
  c.train = cu.grpo(lr=3e-5, kl_coef=0.0)
  c.sandbox = cu.sandbox(workers=2, timeout_s=5.0)
  c.checkpoint = cu.checkpoint(every=10, keep=2)
  # The Challenger memorises two short families far from the seeds; with all
  # families, or fewer steps, it writes no valid program at this size.
  c.warmstart.update(dict(enabled=True, challenger_steps=120, solver_steps=40,
                          batch_size=8, lr=4e-3, short_think=True,
                          challenger_families=("roll", "spotlight"),
                          schedule="constant", warmup_steps=0,
                          solver_batch_size=16, solver_lr=4e-3, solver_schedule="cosine"))
  c.sampling.challenger.temperature = 0.7
  c.log.gallery_tasks = 12
  return c


def small() -> ml_collections.ConfigDict:
  """The tiny preset sized for controlled experiments (`python -m evejax.tools.experiment`).

  For: the Solver's held-out-family accuracy after EVE iterations against the
  control's (the same Solver GRPO steps on static library questions), over
  seeds (BENCHMARKS.md, "Learning fidelity"). The Solver's warm start is four
  times the tiny one's so that it can learn the warm-start families' questions
  at all, and every evaluation also scores it on those families (fresh images):
  without accuracy above chance there, EVE's iterations have nothing to refine
  and the held-out families nothing to transfer from.

  What it shows at this scale (BENCHMARKS.md, "Learning fidelity"): that
  precondition fails. The Solver's warm start learns the reply's format but
  not the answer: its loss settles at 0.17 per token, ln 4 over the 8 target
  tokens, i.e. the one answer letter stays at chance among 4 options, and
  accuracy on the warm-start families is 28% over 3 seeds (chance 25%).
  Method and control then differ only by noise around chance. Showing EVE's
  claim needs a Solver that can answer these comparison questions at all (a
  pretrained VLM).
  """
  c = tiny()
  c.eve.train_family_eval_questions = 48
  c.warmstart.solver_steps = 160
  return c


def painted() -> ml_collections.ConfigDict:
  """The small preset in a painting world, where the visual cue is plain.

  For: testing whether the small Solver's failure is visual. Every edit paints
  one named colour over one part of the image (a quadrant, a horizontal band;
  held out: a vertical band), so each question's answer is visible as a large
  patch of a colour the options name, a cue this tiny model learns to name in
  EvoLMM's grounded world (`evejax.data.transforms.painting`). The Solver's warm
  start is 1500 steps at 1e-3, the rate and length at which that world's
  colours were learned.

  Type-1 questions only, and the Solver's warm start writes the rationale
  ("... matches the arguments {...}", then the letter), so that evaluation
  can tell reading the image (naming the answer's arguments) from the lookup
  that follows (answering the letter of the option named): eval's
  `*_names_answer_type1` and `*_letter_of_named_type1`.

  What it shows at this scale (BENCHMARKS.md, "Learning fidelity", EVE): the
  precondition still fails, and not for want of vision. After the warm start
  the Solver names the painted colour on its own families (24 of 24
  questions; 22 of 24 with the 4-layer `tiny_deep`), but the quadrant or row
  and the letter that follow are at chance (log-prob ln 4 at both tokens):
  what it does not learn is the in-context lookup from the colour it read to
  that option's other fields and letter, in 1500 steps or 3000. With letters
  only (no rationale), or with the colour written into the question, it
  stays at chance too. `painted_palette` takes the lookup out.
  """
  c = small()
  c.eve.update(library="evejax.data.transforms.painting:FAMILIES",
               heldout_families=("column",), seed_families=("paint_quadrant", "stripe"),
               question_types=(1,))
  c.warmstart.update(challenger_families=("stripe",), solver_steps=1500, solver_lr=1e-3,
                     solver_reasoning="rationale")
  c.sampling.solver.max_new_tokens = 48   # the rationale restates the arguments
  c.checkpoint.every = 100
  return c


def painted_palette() -> ml_collections.ConfigDict:
  """`painted` with the lookup taken out: 4 colours, options in a fixed order.

  For: EVE's method against its control where the small Solver can answer at
  all. Every program paints with the same 4 colours and the options are sorted
  by their text (`eve.option_order="sorted"`), so each colour always has the
  same letter (blue A, green B, red C, yellow D): answering needs reading the
  image, which this model learns, and no in-context lookup, which it does not
  (`painted`). Letters only after "The answer is", as in the paper's format.

  What it shows (BENCHMARKS.md, "Learning fidelity", EVE; 3 seeds): the
  precondition holds (after the warm start, own families 0.85 and the held-out
  family 0.88, chance 0.25), and the method does not beat the control (held-out
  −2.8 ± 3.2 points against +4.9 ± 8.4). The tiny Challenger gives two
  argument sets one colour in most programs, so its questions need telling
  edits apart by place, which this Solver does not read, and GRPO on them
  costs the colour → letter map before it recovers.
  """
  c = painted()
  # GRPO's noise undoes the warm start at 8 questions a step (3e-4: held-out
  # 0.85 -> 0.63, seed 0) and it learns at 32 (-> 0.90); the Challenger's 16
  # prompts a step log about 36 questions per iteration for the Solver phase.
  c.eve.update(library="evejax.data.transforms.painting:FOUR_COLOUR_FAMILIES",
               option_order="sorted", iterations=3, solver_steps=8, solver_prompts=32,
               solver_lr=3e-4, challenger_prompts=16)
  c.train.optimizer.lr = 1e-4   # the Challenger's GRPO rate (the Solver's is solver_lr)
  # 120 steps leave the letter at chance and 200 answer 92% (seed 0): the warm
  # start stops inside that turn, so that GRPO has something left to teach.
  c.warmstart.update(solver_reasoning="The answer is", solver_steps=160)
  c.sampling.solver.max_new_tokens = 16
  return c


def qwen2_5_vl_3b() -> ml_collections.ConfigDict:
  c = _base()
  c.model = cu.model("qwen2_5_vl_3b", dtype="bfloat16", param_dtype="float32", remat=True)
  return c


def qwen2_5_vl_7b() -> ml_collections.ConfigDict:
  """The published setup: Qwen2.5-VL-7B-Instruct, every hyperparameter of the paper.

  Fits a TPU v5p-16 slice (8 chips, `mesh.fsdp=-1` = 8) per the TPU compiler:
  every program compiles, the largest (the Solver's decode chunk, 16 prompts x
  G=8) at 78 GiB of 95 per chip and the Solver's GRPO step at 69 GiB, both
  roles' states resident (BENCHMARKS.md, "TPU compiler plans"):
    python -m evejax.tools.aot_compile --config configs/eve.py:qwen2_5_vl_7b \
        --target tpu:v5p-16 --largest
  """
  return _base()


def qwen3_vl_8b() -> ml_collections.ConfigDict:
  """The published setup: Qwen3-VL-8B-Instruct with its prompt conventions.

  Fits a TPU v5p-16 slice (8 chips, `mesh.fsdp=-1` = 8) per the TPU compiler
  (`python -m evejax.tools.aot_compile --config configs/eve.py:qwen3_vl_8b
  --target tpu:v5p-16 --largest`): the Solver's GRPO step peaks at 75 GiB of
  95 per chip and the Challenger's decode chunk at 87, with both roles' states
  resident (BENCHMARKS.md, "TPU compiler plans").
  """
  c = _base()
  c.model = cu.model("qwen3_vl_8b", dtype="bfloat16", param_dtype="float32", remat=True)
  c.eve.update(coordinates="relative", think_tag="thinking")
  # Qwen3-VL's image processor works in 32-pixel units.
  c.data.update(size=448, min_pixels=64 * 64, max_pixels=448 * 448)
  # With both roles' train states resident (33 GiB per device on 8 devices), a
  # chunk of 8 prompts x G=4 Challenger programs of 4096 tokens fits an H100
  # (BENCHMARKS.md, "Memory plans"); 16 prompts do not. Buckets are multiples
  # of the 8 devices the batch is split over.
  c.processing.batch_buckets = (8,)
  return c


def qwen3_5_9b() -> ml_collections.ConfigDict:
  """Qwen3.5-9B, the successor of the published Qwen3-VL-8B setup.

  Qwen3-family prompts: relative 0-1000 coordinates; the reasoning block is
  Qwen3.5's own <think> (prompts close the template's empty think block, the
  reply writes its own: `families`, Family.thinking). The hybrid decoder keeps
  KV for 8 of 32 layers, so 8 prompts x G=8 sample in 15 GiB per device; the
  GRPO step's DeltaNet temporaries put the plan (BENCHMARKS.md, "Memory
  plans") at 123 GiB per device on fsdp=8: 8 x H200 (141 GB), not H100.
  """
  c = qwen3_vl_8b()
  c.model = cu.model("qwen3_5_9b", dtype="bfloat16", param_dtype="float32", remat=True)
  c.eve.update(coordinates="relative", think_tag="think")
  return c


# Arms of `python -m evejax.tools.experiment` (BENCHMARKS.md, "Learning fidelity"):
# named overrides on a preset; the arms of a seed start from one shared warm start.
ARMS = {
    # The method: the Challenger evolves the queue, the Solver trains on its questions.
    "method": {},
    # The same Solver GRPO steps on questions of the static warm-start library: no
    # Challenger phase, no queue growth (the paper's claim is self-evolution over this).
    "control": {"eve.solver_questions": "library", "eve.challenger_steps": 0},
}
# Beside held-out-family accuracy: the warm-start families' (what the Solver can
# learn at all), the Challenger's valid programs and the queue.
EXPERIMENT_METRICS = ("eval/train_families_accuracy", "eval/heldout_accuracy_type0",
                      "eval/heldout_accuracy_type1", "challenger/valid_rate",
                      "challenger/admitted", "solver/reward/accuracy")

PRESETS = {"tiny": tiny, "small": small, "painted": painted, "painted_palette": painted_palette,
           "qwen2_5_vl_3b": qwen2_5_vl_3b,
           "qwen2_5_vl_7b": qwen2_5_vl_7b, "qwen3_vl_8b": qwen3_vl_8b,
           "qwen3_5_9b": qwen3_5_9b}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return cu.select_preset(arg, PRESETS, default="tiny")
