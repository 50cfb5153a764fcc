"""A shortened recipe with every stage kind, for the fault tests (tests/lifecycle_test.py).

`Staged` extends runner_test's toy recipe (a writer and a reader that learn
to repeat letters) to the stage kinds the real recipes have:

  copy    a warm start of the writer (SFT)
  eval    a held-out number from the trained weights (trains=False)
  learn   GRPO of the writer, then of the reader
  render  a sandbox job per step (a program whose output depends on the
          step), its pixels logged

Each step prints `STEP <stage name> <step>` when it starts, so a test in
another process can pick its moment. `toy.hang` ("sleep": a stalled wait,
"gil": a C call that never lets go of the GIL) hangs the step `toy.hang_at`
(`stage name:step`); `toy.kill_worker_at` kills the sandbox worker from
outside in the middle of that step's job.

Run it as a job: `python -m evejax.main --config tests/lifecycle_recipes.py:staged`
(tests and the repository on PYTHONPATH, as resume_util.subprocess_env sets).
"""
from __future__ import annotations

import re
import threading
import time

import ml_collections
import numpy as np
import psutil

from evejax import config_utils as cu
from evejax.recipes import runner
from evejax.recipes.schedule import Stage
from evejax.sandbox import EveJob

import runner_test

RENDER = """from PIL import Image, ImageDraw


def edit_image(img, k):
    out = Image.new("RGB", (40, 40), ({step} * 40 % 256, 60, 90))
    ImageDraw.Draw(out).rectangle([k * 10, 0, k * 10 + 9, 39], fill=(250, 250, 250))
    return out


args_list = [{{"k": 0}}, {{"k": 1}}, {{"k": 2}}, {{"k": 3}}]
"""
SLOW_RENDER = RENDER.replace("def edit_image(img, k):\n",
                             "def edit_image(img, k):\n    import time\n    time.sleep(0.4)\n")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg   # one preset: "staged"
  c = runner_test.toy_config(**{"toy.steps": 2, "toy.warm": 2})
  c.recipe = "tests.lifecycle_recipes:Staged"
  c.checkpoint.every = 1
  c.toy.hang = ""             # "" | sleep | gil
  c.toy.hang_at = ""          # "<stage name>:<step>"
  c.toy.kill_worker_at = ""   # "<stage name>:<step>"
  c.sandbox = cu.sandbox(workers=1)
  c.sandbox.preload = ()      # workers start in about a second
  c.checks = ml_collections.ConfigDict(dict(min_pixels=16 * 16))
  return c


class Staged(runner_test.Toy):
  """The toy recipe with a warm start, evaluations and a sandbox stage."""

  @classmethod
  def role_specs(cls, config):
    # The warm-started weights are the writer's KL reference: saved in checkpoints.
    return [runner.RoleSpec("writer", trained_reference=True), runner.RoleSpec("reader")]

  @classmethod
  def stages(cls, config):
    c = config.toy
    return [Stage("copy", "writer", 0, c.warm, optimizer="sft"),
            Stage("eval", iteration=0, trains=False),
            Stage("learn", "writer", 1, c.steps, frozen=("reader",)),
            Stage("render", iteration=1, steps=2),
            Stage("learn", "reader", 1, c.steps),
            Stage("eval", iteration=1, trains=False)]

  def step(self, stage, step):
    where = f"{stage.name}:{step}"
    print(f"STEP {stage.name} {step}", flush=True)
    if where == self.config.toy.hang_at:
      hang(self.config.toy.hang)
    return super().step(stage, step)

  def eval_step(self, stage, step):
    del stage, step
    weights = self.run.roles["writer"].weights["text"]["embed"]["embedding"]
    return {"heldout_accuracy": float(np.asarray(weights, np.float64).sum()) % 1.0}

  def render_step(self, stage, step):
    run = self.run
    pool = run.open_sandbox()
    kill = f"{stage.name}:{step}" == self.config.toy.kill_worker_at
    job = EveJob((SLOW_RENDER if kill else RENDER).format(step=step), self.image)
    future = pool.submit(job)
    if kill:
      kill_worker_soon(pool)
    result, = run.sandbox_results([future])
    run.log({"ok": float(result.ok),
             "pixels": float(np.mean([im.mean() for im in result.images]))}, prefix="render")


def hang(kind: str) -> None:
  """Never returns: a stalled wait, or a C call holding the GIL."""
  if kind == "gil":
    re.match(r"(a+)+$", "a" * 64 + "b")   # backtracks for ages without releasing the GIL
  threading.Event().wait()


def kill_worker_soon(pool, into_job_s: float = 0.6) -> None:
  """SIGKILLs the pool's worker from outside while its job runs (as the OOM killer would)."""
  launcher = psutil.Process(pool._slots[0].proc.pid)   # pylint: disable=protected-access
  zygote = launcher.children()[0]

  def kill():
    time.sleep(into_job_s)
    zygote.kill()

  threading.Thread(target=kill, daemon=True).start()


RECIPE = Staged
