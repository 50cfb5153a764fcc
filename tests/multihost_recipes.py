"""Recipes and configs the multi-process tests run through `python -m evejax.main`.

    launch/local.sh --processes 2 --cpu_devices 4 tests/multihost_recipes.py:toy WORKDIR

`toy`: tests/runner_test.py's two-role recipe with its prompts shared out
between processes (and a reward that varies from the first step). `eve`: the EVE recipe, shortened hard, with a scripted
Challenger (library programs) and a scripted Solver (random letters) so that
programs run, pass rates are spread and the queue admits some, in seconds;
every other part (sandbox, questions, rewards, GRPO, queue, Solver data, the
warm start's SFT) is the real recipe's.

At the end every process writes `host_state.p<i>.json`: its cursor, counts
and recipe state, which the tests compare byte for byte.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from evejax.data import transforms
from evejax.recipes import eve
from evejax.recipes import eve_tasks
from evejax.recipes import role as role_lib
from evejax.recipes import runner

import runner_test

# Families whose replies fit the tiny preset's buckets beside the prompt.
_FAMILIES = ("flip", "mask_cell", "spotlight", "zoom", "slice_shift")


class SharedToy(runner_test.Toy):
  """The toy recipe with each step's prompts shared out between processes."""

  multiprocess = True

  def learn_step(self, stage, step):
    c, run = self.config.toy, self.run
    if stage.role == "writer" and step == 0:
      run.freeze("reader")
    rng = np.random.default_rng(run.seed(stage.name, step))
    letters = [runner_test.LETTERS[i] for i in rng.integers(len(runner_test.LETTERS),
                                                            size=c.prompts)]
    texts = [f"Say {x} {x} {x}." for x in letters] + ["too long " * 200]
    mine = run.share(len(texts))
    role = run.roles[stage.role]
    samples = role.generate([run.prompt(texts[j], [self.image]) for j in mine], c.group,
                            run.seed(stage.name, step, "sample"))
    # Which tokens are 0 mod 3, 1 or 2 (per the letter): a reward that varies
    # within groups from the first step (an untrained model never says the
    # letter), so every step's gradient is signal, not rounding noise that
    # Adam would blow up differently in each layout.
    want = [runner_test.LETTERS.index(letters[mine[samples.prompt_of(r)]])
            for r in range(len(samples))]
    rewards = [float(np.mean(np.asarray(t) % 3 == w)) for t, w in zip(samples.tokens, want)]
    metrics = role.update(samples, rewards)
    self.prompts_seen += len(texts)
    metrics.update(reward_mean=float(np.mean(run.gather(rewards))),
                   prompts_seen=self.prompts_seen)
    if stage.role == "writer":
      frozen = run.frozen["reader"].params["vision"]["patch_embed"]["kernel"]
      metrics["frozen_reader_sum"] = float(jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32))(frozen))
    run.log(metrics, prefix=stage.role)


def _library_challenger(size):
  library = transforms.library()

  def reply(prompt_index, member, rng):
    fam = library[_FAMILIES[rng.integers(len(_FAMILIES))]]
    return eve_tasks.challenger_sft_target(fam, fam.sample(rng, *size),
                                           think_text=fam.description)
  return lambda r: role_lib.ScriptedRole(r, reply)


def _guessing_solver(role):
  return role_lib.ScriptedRole(
      role, lambda i, g, rng: f"The answer is \\boxed{{{'ABCD'[rng.integers(4)]}}}.")


def _dump_host_state(r: runner.Runner, workdir: str) -> None:
  state = r._host_state()   # pylint: disable=protected-access
  path = os.path.join(workdir, f"host_state.p{jax.process_index()}.json")
  with open(path, "w") as f:
    json.dump(state, f, sort_keys=True)


def run(config, workdir):
  if config.test_recipe == "toy":
    r = runner.Runner(SharedToy, config, workdir)
  else:
    size = (config.data.size,) * 2
    r = runner.Runner(eve.Eve, config, workdir,
                      role_wrappers={"challenger": _library_challenger(size),
                                     "solver": _guessing_solver})
  summary = r.run_all()
  _dump_host_state(r, workdir)
  return summary


def toy():
  c = runner_test.toy_config()
  c.recipe = "tests.multihost_recipes"
  c.test_recipe = "toy"
  c.mesh.devices = -1
  c.processing.batch_buckets = (8,)
  c.checkpoint.every = 1
  c.toy.steps = 4
  return c


def eve_short():
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  c = config_utils.load_config("configs/eve.py:tiny")
  c.recipe = "tests.multihost_recipes"
  c.test_recipe = "eve"
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
  c.log.tensorboard = False
  c.log.progress = False
  c.checkpoint.every = 1
  c.checkpoint.keep = 100
  c.checkpoint.async_save = False
  return c


def get_config(arg=None):
  return {"toy": toy, "eve": eve_short}[arg or "toy"]()
