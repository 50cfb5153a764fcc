"""Recipes: one module per method on one shared core.

  runner.py   stages, cursor, exact resume, checkpoints, metrics, galleries
  role.py     a Role = a policy (learner + optimizer) + its sampling block
  loading.py  the model a run starts from (preset or HF checkpoint)
  eve.py      EVE's algorithm box (eve_queue.py, eve_tasks.py: its queue and task text)

`config.recipe` names a built-in recipe or a module path `pkg.module` with
`run(config, workdir)`.
"""
BUILTIN = ("eve", "mmzero")
