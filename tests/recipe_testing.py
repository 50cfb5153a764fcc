"""Helpers shared by the recipe tests: short configs, scripted and recording roles,
and resuming a run from a copy of its checkpoints up to a schedule position."""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from evejax import config_utils
from evejax import observe
from evejax.data import mmzero_library
from evejax.data import transforms
from evejax.recipes import eve_tasks
from evejax.recipes import mmzero_tasks
from evejax.recipes import role as role_lib
from evejax.recipes import runner
from evejax.recipes import schedule


def tempdir(test) -> str:
  """A directory removed when `test` ends (recipe runs keep every checkpoint: GBs).
  Not absltest's create_tempdir, which needs parsed absl flags that pytest lacks."""
  path = tempfile.mkdtemp(prefix="evejax_test_")
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def short_config(spec: str, **overrides):
  """A preset on one device without progress bars, with `overrides` ("a.b": value)."""
  c = config_utils.load_config(spec)
  c.mesh.devices = 1
  c.log.progress = False
  for k, v in overrides.items():
    config_utils.set_value(c, k, v)
  return c


class Recording(role_lib.Role):
  """A role that records every update it makes: (name, one reward per row)."""

  log: list | None = None

  def update(self, samples, rewards):
    self.log.append((self.name, [float(getattr(r, "value", r)) for r in rewards]))
    return super().update(samples, rewards)


def recording(log: list, reply):
  """A role wrapper: the role replying from `reply` and recording its updates in `log`."""
  def wrap(role: role_lib.Role) -> Recording:
    out = Recording(role.name, role.policy, role.sampling,
                    replies=role_lib.ScriptedReplies(reply), snapshot=role.snapshot)
    out.log = log
    return out
  return wrap


def records(workdir: str) -> list[dict]:
  return observe.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def by_step(recs: list[dict], key: str) -> dict[int, float]:
  return {r["step"]: r[key] for r in recs if key in r}


def copy_checkpoints(source: str, target: str, up_to: int) -> None:
  """A workdir `target` holding `source`'s checkpoints up to position `up_to`: a run
  killed right after that position, as the resumed run sees it."""
  os.makedirs(os.path.join(target, "checkpoints"))
  for name in os.listdir(os.path.join(source, "checkpoints")):
    if name.isdigit() and int(name) <= up_to:
      shutil.copytree(os.path.join(source, "checkpoints", name),
                      os.path.join(target, "checkpoints", name))


def assert_same_by_step(test, full: list[dict], resumed: list[dict], keys) -> None:
  """Every key the resumed run logged equals the uninterrupted run's at each step."""
  for key in keys:
    b = by_step(resumed, key)
    a = {s: v for s, v in by_step(full, key).items() if s in b}
    test.assertNotEmpty(b, key)
    test.assertEqual(sorted(a), sorted(b), key)
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)],
                               rtol=1e-5, atol=1e-6, err_msg=key)


# -- scripted roles: replies a trained model might give, drawn so that every filter
# of a recipe keeps some rows and drops others ----------------------------------

# EVE families whose replies fit the tiny preset's buckets beside the prompt.
EVE_FAMILIES = ("flip", "mask_cell", "spotlight", "zoom", "slice_shift")
_BROKEN_SVG = "```svg\n<svg xmlns='http://www.w3.org/2000/svg'><rect\n```"


def scripted(reply):
  """A role wrapper: the role replying from `reply(prompt_id, member, rng)`."""
  return lambda role: role.scripted(reply)


# MM-Zero at its smallest: one step per phase, small pools, every rendered item
# kept (the filters' bands open): wiring and resume, not learning.
MMZERO_WIRING = {
    "warmstart.enabled": False, "mmzero.iterations": 1, "mmzero.proposer_steps": 1,
    "mmzero.coder_steps": 1, "mmzero.solver_steps": 1, "mmzero.proposer_prompts": 2,
    "mmzero.proposer_group": 2, "mmzero.coder_samples": 2, "mmzero.solver_samples": 2,
    "mmzero.coder_pool": 4, "mmzero.coder_prompts": 2, "mmzero.coder_group": 2,
    "mmzero.solver_pool": 4, "mmzero.solver_select_samples": 2, "mmzero.solver_prompts": 2,
    "mmzero.solver_group": 2, "mmzero.heldout_items": 2, "mmzero.heldout_coder_samples": 1,
    "mmzero.coder_band": (0.0, 1.0), "mmzero.solver_hard_band": (0.0, 1.0),
    "mmzero.solver_easy_min": 0.0, "log.tensorboard": False, "log.progress": False}


def eve_roles(config, families=EVE_FAMILIES, empty_code=frozenset()):
  """A Challenger writing library programs with fresh arguments (what a pretrained
  Challenger would write) and a Solver guessing letters (pass rates spread).
  Rows (prompt id, member) in `empty_code` reply with an empty code block."""
  library = transforms.library()
  size = (config.data.size,) * 2   # built-in scenes are square

  def challenger(i, g, rng):
    if (i, g) in empty_code:
      return "<think>Nothing to write.</think>\n```python\n```"
    fam = library[families[rng.integers(len(families))]]
    return eve_tasks.challenger_sft_target(fam, fam.sample(rng, *size),
                                           think_text=fam.description)
  return {"challenger": scripted(challenger),
          "solver": scripted(lambda i, g, rng: f"The answer is \\boxed{{{'ABCD'[rng.integers(4)]}}}.")}


def mmzero_roles():
  """Proposals of library items (some unparseable), codes that render or not,
  answers drawn among the item's own and a wrong one."""
  items = [mmzero_library.make_item("bar_chart", np.random.default_rng(k), n=3)
           for k in range(3)]

  def proposer(i, g, rng):
    k = rng.integers(len(items) + 1)
    return mmzero_tasks.proposal_text(items[k]) if k < len(items) else "no tags here"

  def coder(i, g, rng):
    k = rng.integers(len(items) + 1)
    return mmzero_tasks.coder_target(items[k].svg) if k < len(items) else _BROKEN_SVG

  def solver(i, g, rng):
    item = items[rng.integers(len(items))]
    answer = (item.easy_answer, item.hard_answer, "7")[rng.integers(3)]
    return f"<think>x</think>\\boxed{{{answer}}}"
  return {"proposer": scripted(proposer), "coder": scripted(coder), "solver": scripted(solver)}


def evolmm_roles():
  """Questions (some without their tag) and answers that agree more or less."""
  questions = ("What colour is the square?", "How many shapes are there?")
  colours = ("red", "blue", "green")
  return {
      "proposer": scripted(lambda i, g, rng: (
          f"<question>{questions[rng.integers(2)]}</question> a question"
          if rng.random() < 0.8 else "no tag")),
      "solver": scripted(lambda i, g, rng: f"<answer>{colours[rng.integers(1 + i % 3)]}</answer>"),
  }


def check_resume(test, recipe_cls, config, roles, kind: str, step: int, keys,
                 root: str | None = None) -> list[dict]:
  """Runs `recipe_cls` with `roles`, checkpointing only at (first `kind` stage,
  `step`) and stage ends; resumes a copy of its checkpoints up to there; asserts
  the resumed run logs `keys` as the uninterrupted one did. Returns its records;
  the uninterrupted run's workdir is `root`/full."""
  stages = recipe_cls.stages(config)
  index = next(i for i, s in enumerate(stages) if s.kind == kind)
  position = schedule.Schedule(stages).units_done((index, step))
  config.checkpoint.every = position
  config.checkpoint.keep = 1000
  root = root or tempdir(test)
  full, part = os.path.join(root, "full"), os.path.join(root, "part")
  runner.run_recipe(recipe_cls, config, full, role_wrappers=roles)
  copy_checkpoints(full, part, position)
  with runner.Runner(recipe_cls, config, part, role_wrappers=roles) as resumed:
    test.assertEqual(resumed.run.cursor, (index, step))
    resumed.run_schedule()
  full_records = records(full)
  assert_same_by_step(test, full_records, records(part), keys)
  return full_records
