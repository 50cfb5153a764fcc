"""`AdaptedModel`: the VLM with a LoRA adapter, as a model `Sampler` accepts.

    sampler = Sampler(model_config, model=AdaptedModel(cfg), ...)
    out = sampler.generate({"backbone": params, "adapter": adapter}, ...)

The sampler already converts the params once per generate call
(`inference_params`: text weights in the compute dtype, one array per layer);
here that conversion also merges the adapter into the unrolled kernels, so
prefill and every decode step run the base model's programs on weights of
the base model's shapes: sampling with an adapter costs what sampling the
base model does, plus one merge per call. One sampler serves every adapter of
the same `cfg` (one compile), and the backbone is placed on the mesh once.
"""
from __future__ import annotations

import jax

from evejax.models.lora import adapter as adapter_lib
from evejax.models.lora.config import LoraConfig


class AdaptedModel:
  """`evejax.models.vlm`'s sampling interface on {"backbone", "adapter"}.

  Needs the Sampler's unrolled path (its default `unroll_layers=True`): the
  scanned path would run the model on the params as given, and merging
  inside every decode step would copy every adapted kernel per token.
  """

  def __init__(self, cfg: LoraConfig, base=None):
    if base is None:
      from evejax.models import vlm as base  # pylint: disable=g-import-not-at-top
    self.cfg = cfg
    self.base = base

  def param_axes(self, config) -> dict:
    axes = self.base.param_axes(config)
    shapes = jax.eval_shape(lambda: adapter_lib.init_adapter(
        self.cfg, config, jax.random.key(0)))
    return {"backbone": axes, "adapter": adapter_lib.adapter_axes(shapes, axes)}

  def inference_params(self, params: dict, config) -> dict:
    box = [self.base.inference_params(params["backbone"], config)]
    return adapter_lib.merge_owned(box, params["adapter"], self.cfg)

  def inference_param_axes(self, config) -> dict:
    return self.base.inference_param_axes(config)

  def cache_axes(self, config):
    return self.base.cache_axes(config)

  def _check(self, params) -> None:
    if "backbone" in params:
      raise ValueError(
          "AdaptedModel merges its adapter once per generate call in "
          "inference_params; build the Sampler with unroll_layers=True.")

  def prefill(self, params, config, inputs, cache_size):
    self._check(params)
    return self.base.prefill(params, config, inputs, cache_size)

  def decode_step(self, params, config, tokens, cache):
    self._check(params)
    return self.base.decode_step(params, config, tokens, cache)
