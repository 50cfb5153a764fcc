"""What every recipe sets up the same way: model, tokenizer, mesh, prompts, sampling.

Recipes are the only place that knows a method; this module holds the parts
that are not method-specific so each recipe file can read like its algorithm
box.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from evejax import parallel
from evejax.models import hf
from evejax.models import presets
from evejax.models import vlm
from evejax.processing import batching
from evejax.processing import prompts
from evejax.processing import tokenizer as tokenizer_lib
from evejax.sampling import SamplingParams


class SetupError(ValueError):
  """A user-fixable problem with the run's inputs (config, checkpoint, images)."""


@dataclasses.dataclass
class Runtime:
  """The pieces a recipe builds once per run."""
  model_config: presets.ModelConfig
  tokenizer: tokenizer_lib.Tokenizer
  mesh: jax.sharding.Mesh
  rules: Any
  params: Any           # initial params, on the mesh


def model_config_from(config) -> presets.ModelConfig:
  """The checkpoint's config.json when init.hf_dir is set, else the named preset."""
  overrides = dict(dtype=config.model.dtype, remat=bool(config.model.remat))
  if config.init.hf_dir:
    if not os.path.isfile(os.path.join(config.init.hf_dir, "config.json")):
      raise SetupError(
          f"config.init.hf_dir={config.init.hf_dir!r} has no config.json; point it at a "
          "local Hugging Face Qwen2.5-VL directory (config.json, *.safetensors, "
          "tokenizer.json).")
    return hf.config_from_hf(config.init.hf_dir).replace(**overrides)
  try:
    return presets.get_preset(config.model.preset, **overrides)
  except ValueError as e:
    raise SetupError(f"config.model.preset: {e}") from None


def tokenizer_from(config) -> tokenizer_lib.Tokenizer:
  path = config.init.tokenizer_dir or config.init.hf_dir
  if not path:
    return tokenizer_lib.builtin_tokenizer()
  return tokenizer_lib.load_tokenizer(path)


def build_runtime(config) -> Runtime:
  """Model config, tokenizer, mesh and initial params (random or from init.hf_dir)."""
  model_config = model_config_from(config)
  tokenizer = tokenizer_from(config)
  if tokenizer.vocab_size > model_config.text.vocab_size:
    raise SetupError(
        f"tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is "
        f"{model_config.text.vocab_size}; use the checkpoint's own tokenizer.")
  mesh_axes = {k: config.mesh[k] for k in parallel.MESH_AXES}
  n = int(config.mesh.get("devices", -1))
  mesh = parallel.make_mesh(mesh_axes, devices=jax.devices()[:n] if n > 0 else None)
  rules = parallel.rules_from_config(config.mesh)
  dtype = jnp.dtype(config.model.param_dtype)
  abstract = jax.eval_shape(lambda: vlm.init_params(model_config, jax.random.PRNGKey(0), dtype))
  shardings = parallel.shardings_for(vlm.param_axes(model_config), mesh, rules,
                                     shapes_tree=abstract)
  if config.init.hf_dir:
    logging.info("Loading %s onto mesh %s", config.init.hf_dir, dict(mesh.shape))
    params = hf.load_params(config.init.hf_dir, model_config, shardings=shardings, dtype=dtype)
  else:
    logging.info("Random init of model preset %r", config.model.preset)
    params = jax.jit(lambda k: vlm.init_params(model_config, k, dtype),
                     out_shardings=shardings)(jax.random.PRNGKey(config.seed))
  return Runtime(model_config, tokenizer, mesh, rules, params)


def prompt_example(rt: Runtime, text: str, images: Sequence[Any], *, min_pixels: int,
                   max_pixels: int, image_first: bool = True) -> batching.Example:
  """A one-turn user prompt (images, then text) as a batching.Example."""
  return prompts.user_prompt(rt.model_config, rt.tokenizer, text, images,
                             min_pixels=min_pixels, max_pixels=max_pixels,
                             image_first=image_first)


def completion_ids(rt: Runtime, text: str) -> np.ndarray:
  """A target reply as the model should emit it: text, then <|im_end|>."""
  return prompts.completion_ids(rt.tokenizer, text)


def sampling_params(rt: Runtime, block, *, group_size: int, greedy: bool = False
                    ) -> SamplingParams:
  """SamplingParams from a config block {temperature, top_p, top_k, max_new_tokens}."""
  return SamplingParams(
      max_new_tokens=int(block.max_new_tokens), temperature=float(block.temperature),
      top_k=int(block.top_k), top_p=float(block.top_p), greedy=greedy,
      group_size=group_size, eos_ids=tuple(rt.tokenizer.stop_ids),
      pad_id=rt.tokenizer.pad_id)


def fits(example: batching.Example, length_buckets: Sequence[int],
         patch_buckets: Sequence[int], reserve: int = 0) -> bool:
  """Whether a prompt (plus `reserve` new tokens) fits the largest buckets."""
  n_patches = sum(p.shape[0] for p, _ in example.images)
  return (len(example.tokens) + reserve <= max(length_buckets)
          and n_patches <= max(patch_buckets))
