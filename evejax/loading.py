"""The model a run starts from: its config, tokenizer, mesh and initial params.

`load_model(config)` reads `config.model`, `config.init` and `config.mesh`:
a local HF checkpoint directory (`init.hf_dir`, read tensor by tensor onto the
mesh) or a named preset initialised from `config.seed`. Recipes, the evaluator
and the tools all start here.

A checkpoint directory that cannot be loaded (an architecture evejax does not
implement, a damaged config.json, a shard listed in the index but missing, a
truncated safetensors file, tensors that do not match the config, no
tokenizer.json) is one `SetupError` naming the directory and the fix.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from evejax import parallel
from evejax.models import hf
from evejax.models import presets
from evejax.models import vlm
from evejax.processing import tokenizer as tokenizer_lib


class SetupError(ValueError):
  """A user-fixable problem with the run's inputs (config, checkpoint, images)."""


@dataclasses.dataclass
class LoadedModel:
  """The model a run starts from (params are dropped once the roles hold copies)."""
  model_config: presets.ModelConfig
  tokenizer: tokenizer_lib.Tokenizer
  mesh: jax.sharding.Mesh
  rules: Any
  params: Any           # initial params, on the mesh


def model_config_from(config) -> presets.ModelConfig:
  """The checkpoint's config.json when init.hf_dir is set, else the named preset."""
  overrides = dict(dtype=config.model.dtype, remat=bool(config.model.remat),
                   attention=config.model.get("attention", "auto"))
  if config.init.hf_dir:
    if not os.path.isfile(os.path.join(config.init.hf_dir, "config.json")):
      raise SetupError(
          f"config.init.hf_dir={config.init.hf_dir!r} has no config.json; point it at a "
          "local Hugging Face Qwen2.5-VL, Qwen3-VL or Qwen3.5 directory (config.json, "
          "*.safetensors, tokenizer.json).")
    with _checkpoint_errors(config.init.hf_dir):
      return hf.config_from_hf(config.init.hf_dir).replace(**overrides)
  try:
    return presets.get_preset(config.model.preset, **overrides)
  except ValueError as e:
    raise SetupError(f"config.model.preset: {e}") from None


def tokenizer_from(config) -> tokenizer_lib.Tokenizer:
  path = config.init.tokenizer_dir or config.init.hf_dir
  if not path:
    return tokenizer_lib.builtin_tokenizer()
  with _checkpoint_errors(path):
    return tokenizer_lib.load_tokenizer(path)


def make_mesh(config) -> jax.sharding.Mesh:
  """The mesh of `config.mesh` (its `devices`: the first N devices, -1 all)."""
  mesh_axes = {k: config.mesh[k] for k in parallel.MESH_AXES}
  n = int(config.mesh.get("devices", -1))
  return parallel.make_mesh(mesh_axes, devices=jax.devices()[:n] if n > 0 else None)


def load_model(config) -> LoadedModel:
  """Model config, tokenizer, mesh and initial params (random or from init.hf_dir)."""
  model_config = model_config_from(config)
  tokenizer = tokenizer_from(config)
  if tokenizer.vocab_size > model_config.text.vocab_size:
    raise SetupError(
        f"tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is "
        f"{model_config.text.vocab_size}; use the checkpoint's own tokenizer.")
  mesh = make_mesh(config)
  rules = parallel.rules_from_config(config.mesh)
  dtype = jnp.dtype(config.model.param_dtype)
  abstract = jax.eval_shape(lambda: vlm.init_params(model_config, jax.random.PRNGKey(0), dtype))
  shardings = parallel.shardings_for(vlm.param_axes(model_config), mesh, rules,
                                     shapes_tree=abstract)
  if config.init.hf_dir:
    logging.info("Loading %s onto mesh %s", config.init.hf_dir, dict(mesh.shape))
    with _checkpoint_errors(config.init.hf_dir):
      params = hf.load_params(config.init.hf_dir, model_config, shardings=shardings,
                              dtype=dtype)
  else:
    logging.info("Random init of model preset %r", config.model.preset)
    params = jax.jit(lambda k: vlm.init_params(model_config, k, dtype),
                     out_shardings=shardings)(jax.random.PRNGKey(config.seed))
  return LoadedModel(model_config, tokenizer, mesh, rules, params)


@contextlib.contextmanager
def _checkpoint_errors(path: str):
  """A checkpoint directory that cannot be read becomes one SetupError naming it."""
  import safetensors  # pylint: disable=g-import-not-at-top
  try:
    yield
  except (OSError, ValueError, KeyError, safetensors.SafetensorError) as e:
    detail = " ".join(str(e).split())
    raise SetupError(
        f"cannot load the checkpoint in {path}: {type(e).__name__}: {detail} "
        "(config.init.hf_dir / init.tokenizer_dir must be a complete local Hugging Face "
        "Qwen2.5-VL or Qwen3-VL directory: re-download the missing or damaged files).") from None
