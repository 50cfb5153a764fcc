"""Recipes: one module per method on one shared core.

  schedule.py  stages (with the role lifecycles they declare) and positions in a run
  runner.py    the run: roles, sandbox, phase data, resume, checkpoints, metrics, galleries
  role.py      a Role = a policy (learner + optimizer) + its sampling block + its replies
  eve.py       EVE's algorithm box (eve_queue.py, eve_tasks.py: its queue and task text)
  mmzero.py    MM-Zero's (mmzero_tasks.py: its prompts and parsing)
  evolmm.py    EvoLMM's (evolmm_tasks.py: its prompts and grading)

`config.recipe` names a built-in recipe, a module `pkg.module` whose `RECIPE` is
a `runner.Recipe` subclass, or the class itself as `pkg.module:Class`.
"""
BUILTIN = ("eve", "mmzero", "evolmm")


def resolve(name: str):
  """The Recipe class `config.recipe` names: a built-in name, `pkg.module` (its
  `RECIPE`) or `pkg.module:Class`."""
  import importlib  # pylint: disable=g-import-not-at-top
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  module_name, _, attr = name.partition(":")
  if "." not in module_name:
    module_name = f"evejax.recipes.{module_name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise config_utils.ConfigError(
          f"config.recipe={name!r}: no module {module_name!r}. Built-in recipes: "
          f"{sorted(BUILTIN)}; or give a full import path.") from None
    raise
  recipe = getattr(module, attr or "RECIPE", None)
  if not isinstance(recipe, type):
    raise config_utils.ConfigError(
        f"config.recipe={name!r}: {module_name} has no {attr or 'RECIPE'} (a runner.Recipe "
        "subclass).")
  return recipe
