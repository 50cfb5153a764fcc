"""Recipes and configs the multi-process tests run through `python -m evejax.main`.

    launch/local.sh --processes 2 --cpu_devices 4 tests/multihost_recipes.py:toy WORKDIR

`toy`: tests/runner_test.py's two-role recipe with its prompts shared out
between processes (and a reward that varies from the first step). `eve`: the
EVE recipe, shortened hard, with a scripted Challenger (library programs) and
a scripted Solver (random letters) so that programs run, pass rates are
spread and the queue admits some, in seconds; every other part (sandbox,
questions, rewards, GRPO, queue, Solver data, the warm start's SFT) is the
real recipe's. `mmzero` and `evolmm` likewise: scripted roles that draw their
replies (library proposals, SVG that renders or not, answers that agree or
not) so that every filter keeps some rows and drops others; `evolmm_sequential`
runs the published per-answer REINFORCE update.

At the end every process writes `host_state.p<i>.json`: its cursor, counts
and recipe state, which the tests compare byte for byte.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from evejax.data import mmzero_library
from evejax.data import transforms
from evejax.recipes import eve
from evejax.recipes import eve_tasks
from evejax.recipes import evolmm
from evejax.recipes import mmzero
from evejax.recipes import mmzero_tasks

import runner_test

# Families whose replies fit the tiny preset's buckets beside the prompt.
_FAMILIES = ("flip", "mask_cell", "spotlight", "zoom", "slice_shift")


def _dump_host_state(run, recipe_state) -> None:
  """What the tests compare across processes: the checkpointed host state."""
  state = {"cursor": list(run.cursor), "counts": dict(run.counts), "results": run.results,
           "phases": {n: p.records for n, p in run.phases.items()}, "recipe": recipe_state}
  path = os.path.join(run.workdir, f"host_state.p{jax.process_index()}.json")
  with open(path, "w") as f:
    json.dump(state, f, sort_keys=True, default=str)


class _Harness:
  """A recipe with scripted roles that writes its host state at the end."""

  scripted_roles: dict = {}

  def __init__(self, run):
    super().__init__(run)
    for name, wrap in self.scripted_roles_for(run.config).items():
      run.roles[name] = wrap(run.roles[name])

  @classmethod
  def scripted_roles_for(cls, config):
    return cls.scripted_roles

  def summary(self):
    out = super().summary()
    self.run.sync_counts()
    _dump_host_state(self.run, self.state())
    return out


class SharedToy(_Harness, runner_test.Toy):
  """The toy recipe with each step's prompts shared out between processes."""

  multiprocess = True

  def learn_step(self, stage, step):
    c, run = self.config.toy, self.run
    rng = np.random.default_rng(run.seed(stage.name, step))
    letters = [runner_test.LETTERS[i] for i in rng.integers(len(runner_test.LETTERS),
                                                            size=c.prompts)]
    texts = [f"Say {x} {x} {x}." for x in letters] + ["too long " * 200]
    mine = list(run.share(len(texts)))
    role = run.roles[stage.role]
    samples = role.generate([run.prompt(texts[j], [self.image]) for j in mine], c.group,
                            run.seed(stage.name, step, "sample"), ids=mine)
    # Which tokens are 0 mod 3, 1 or 2 (per the letter): a reward that varies
    # within groups from the first step (an untrained model never says the
    # letter), so every step's gradient is signal, not rounding noise that
    # Adam would blow up differently in each layout.
    want = [runner_test.LETTERS.index(letters[mine[samples.prompt_of(r)]])
            for r in range(len(samples))]
    rewards = samples.gather([float(np.mean(np.asarray(t) % 3 == w))
                              for t, w in zip(samples.tokens, want)])
    metrics = role.update(samples, rewards)
    self.prompts_seen += len(texts)
    metrics.update(prompts_seen=self.prompts_seen)
    if stage.role == "writer":
      frozen = run.frozen["reader"].weights["vision"]["patch_embed"]["kernel"]
      metrics["frozen_reader_sum"] = float(jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32))(frozen))
    run.log(metrics, prefix=stage.role)


def _library_challenger(size):
  library = transforms.library()

  def reply(prompt_index, member, rng):
    fam = library[_FAMILIES[rng.integers(len(_FAMILIES))]]
    return eve_tasks.challenger_sft_target(fam, fam.sample(rng, *size),
                                           think_text=fam.description)
  return _scripted(reply)


def _scripted(reply):
  return lambda role: role.scripted(reply)


_guessing_solver = _scripted(
    lambda i, g, rng: f"The answer is \\boxed{{{'ABCD'[rng.integers(4)]}}}.")


_ITEMS = [mmzero_library.make_item("bar_chart", np.random.default_rng(k), n=3)
          for k in range(3)]
_BROKEN_SVG = "```svg\n<svg xmlns='http://www.w3.org/2000/svg'><rect\n```"


def _mmzero_roles():
  """Proposals of library items (some unparseable), codes that render or not,
  answers drawn among the item's own and a wrong one."""
  def proposer(i, g, rng):
    k = rng.integers(len(_ITEMS) + 1)
    return mmzero_tasks.proposal_text(_ITEMS[k]) if k < len(_ITEMS) else "no tags here"

  def coder(i, g, rng):
    k = rng.integers(len(_ITEMS) + 1)
    return mmzero_tasks.coder_target(_ITEMS[k].svg) if k < len(_ITEMS) else _BROKEN_SVG

  def solver(i, g, rng):
    item = _ITEMS[rng.integers(len(_ITEMS))]
    answer = (item.easy_answer, item.hard_answer, "7")[rng.integers(3)]
    return f"<think>x</think>\\boxed{{{answer}}}"
  return {"proposer": _scripted(proposer), "coder": _scripted(coder),
          "solver": _scripted(solver)}


def _evolmm_roles():
  questions = ("What colour is the square?", "How many shapes are there?")
  colours = ("red", "blue", "green")
  return {
      "proposer": _scripted(lambda i, g, rng: (
          f"<question>{questions[rng.integers(2)]}</question> a question"
          if rng.random() < 0.8 else "no tag")),
      "solver": _scripted(lambda i, g, rng: (
          f"<answer>{colours[rng.integers(1 + i % 3)]}</answer>")),
  }


class ScriptedMmZero(_Harness, mmzero.MmZero):
  scripted_roles = _mmzero_roles()


class ScriptedEvoLmm(_Harness, evolmm.EvoLmm):
  scripted_roles = _evolmm_roles()


class ScriptedEve(_Harness, eve.Eve):

  @classmethod
  def scripted_roles_for(cls, config):
    return {"challenger": _library_challenger((config.data.size,) * 2),
            "solver": _guessing_solver}


def toy():
  c = runner_test.toy_config()
  c.recipe = "tests.multihost_recipes:SharedToy"
  c.mesh.devices = -1
  c.processing.batch_buckets = (8,)
  c.checkpoint.every = 1
  c.toy.steps = 4
  return c


def eve_short():
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  c = _multihost_defaults(config_utils.load_config("configs/eve.py:tiny"), "ScriptedEve")
  c.warmstart.challenger_steps = 1
  c.warmstart.solver_steps = 1
  c.warmstart.batch_size = 4
  c.warmstart.solver_batch_size = 8
  c.eve.iterations = 1
  c.eve.challenger_steps = 3
  c.eve.challenger_prompts = 4
  c.eve.challenger_group = 2
  c.eve.difficulty_samples = 4
  c.eve.solver_steps = 2
  c.eve.solver_prompts = 4
  c.eve.solver_group = 2
  c.eve.heldout_eval_questions = 4
  c.processing.batch_buckets = (8, 16)
  return c


def _multihost_defaults(c, recipe: str):
  c.recipe = f"tests.multihost_recipes:{recipe}"
  c.log.tensorboard = False
  c.log.progress = False
  c.checkpoint.every = 1
  c.checkpoint.keep = 100
  c.checkpoint.async_save = False
  return c


def mmzero_short():
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  c = _multihost_defaults(config_utils.load_config("configs/mmzero.py:tiny"), "ScriptedMmZero")
  c.warmstart.update(proposer_steps=1, coder_steps=1, solver_steps=1, batch_size=4)
  c.mmzero.update(iterations=1, proposer_steps=2, coder_steps=2, solver_steps=2,
                  proposer_prompts=4, proposer_group=2, coder_samples=4, solver_samples=4,
                  coder_pool=4, coder_prompts=4, coder_group=2, solver_pool=6,
                  solver_select_samples=4, solver_prompts=4, solver_group=2,
                  heldout_items=3, heldout_coder_samples=2)
  c.mmzero.solver_hard_band = (0.25, 1.0)   # random answers: keep items
  return c


def evolmm_short(update_rule="grpo"):
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  c = _multihost_defaults(config_utils.load_config("configs/evolmm.py:tiny"), "ScriptedEvoLmm")
  c.warmstart.update(steps=2, batch_size=4)
  c.evolmm.update(iterations=1, steps_per_iteration=3, heldout_questions=6,
                  images_per_step=3, proposer_group=2, samples=4, proposer_every=2)
  c.evolmm.update_rule = update_rule
  c.train.algorithm = evolmm.UPDATE_RULES[update_rule]
  if update_rule == "sequential":
    c.evolmm.images_per_step = 1
    c.evolmm.steps_per_iteration = 2
  return c


def get_config(arg=None):
  return {"toy": toy, "eve": eve_short, "mmzero": mmzero_short, "evolmm": evolmm_short,
          "evolmm_sequential": lambda: evolmm_short("sequential")}[arg or "toy"]()
