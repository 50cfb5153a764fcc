"""Recipes: one module per method on one shared core.

  runner.py   stages, cursor, exact resume, checkpoints, metrics, galleries
  role.py     a Role = a policy (learner + optimizer) + its sampling block
  eve.py      EVE's algorithm box (eve_queue.py, eve_tasks.py: its queue and task text)

`config.recipe` names a built-in recipe or a module path `pkg.module` with
`run(config, workdir)`.
"""
BUILTIN = ("eve", "mmzero", "evolmm")


def resolve(name: str):
  """The recipe module `config.recipe` names (a built-in name or `pkg.module`)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from evejax import config_utils  # pylint: disable=g-import-not-at-top
  module_name = name if "." in name else f"evejax.recipes.{name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise config_utils.ConfigError(
          f"config.recipe={name!r}: no module {module_name!r}. Built-in recipes: "
          f"{sorted(BUILTIN)}; or give a full import path.") from None
    raise
  if not hasattr(module, "run"):
    raise config_utils.ConfigError(f"Recipe module {module_name!r} has no run(config, workdir).")
  return module
