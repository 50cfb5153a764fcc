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

from evejax.recipes import eve
from evejax.recipes import evolmm
from evejax.recipes import mmzero

import recipe_testing as rt
import runner_test

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


class ScriptedMmZero(_Harness, mmzero.MmZero):
  scripted_roles = rt.mmzero_roles()


class ScriptedEvoLmm(_Harness, evolmm.EvoLmm):
  scripted_roles = rt.evolmm_roles()


class ScriptedEve(_Harness, eve.Eve):

  @classmethod
  def scripted_roles_for(cls, config):
    return rt.eve_roles(config)


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
