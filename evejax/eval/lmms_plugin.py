r"""An lmms-eval (0.7.3) model backed by evejax's sampler: `--model evejax`.

    pip install 'lmms-eval==0.7.3'   # see README "Evaluating" for the pins it needs
    python -m lmms_eval --model evejax \
        --model_args hf_dir=/models/Qwen2.5-VL-7B-Instruct,max_new_tokens=1024 \
        --tasks mmmu_val --batch_size 8 --output_path OUT

lmms-eval finds the model through the `lmms_eval.models` entry point group
(`evejax = evejax.eval.lmms_plugin:manifests`, declared in setup.py). The
model is a "simple" lmms-eval model: `generate_until` gets (context,
gen_kwargs, doc_to_visual, doc_id, task, split) per request, fetches the
document's images, builds the prompt as evejax does everywhere
(`processing.prompts.user_prompt`: the family's chat template, images before
the text), and samples with evejax's `Sampler` on a mesh of this host's
devices, batched by lmms-eval's `--batch_size` and grouped by generation
settings (greedy unless `do_sample` with a temperature > 0).

model_args (comma-separated key=value; lists use '/'):
  hf_dir        a local HF checkpoint (Qwen2.5-VL, Qwen3-VL, ... any evejax family)
  workdir       an evejax run directory instead (its latest checkpoint; `role`, `step`)
  preset        a random model preset instead (tests), with `seed`
  devices       mesh devices (-1: all of this host's)
  max_new_tokens  the most new tokens a request may ask for (longer asks are cut to it)
  length_buckets, patch_buckets, batch_buckets   the sampler's static sizes
  min_pixels, max_pixels   image resize bounds (0: the family's defaults)
  system        a system prompt ("" = the family's default)

Only `generate_until` is offered; loglikelihood and multi-round requests raise.
"""
from __future__ import annotations

from typing import Any, Sequence

from absl import logging
import ml_collections
import numpy as np

from evejax import config_utils as cu
from evejax.eval import cli
from evejax.processing import prompts
from evejax.sampling import SamplingParams

try:
  from lmms_eval.api.model import lmms as _LmmsBase  # pylint: disable=g-import-not-at-top
  from lmms_eval.models.registry_v2 import ModelManifest  # pylint: disable=g-import-not-at-top
except ImportError:   # lmms-eval absent: the module imports, the model cannot be built
  _LmmsBase, ModelManifest = object, None

MODEL_ID = "evejax"


def manifests():
  """The entry point's payload: lmms-eval's registration of `--model evejax`."""
  return [ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.EvejaxLMM")]


def _sizes(value, default: Sequence[int]) -> tuple[int, ...]:
  if value in (None, ""):
    return tuple(default)
  if isinstance(value, (int, float)):
    return (int(value),)
  return tuple(int(v) for v in str(value).replace(",", "/").split("/") if v)


def model_config(*, hf_dir: str = "", workdir: str = "", role: str = "solver", step: int = 0,
                 preset: str = "qwen2_5_vl_7b", seed: int = 0, devices: int = -1,
                 dtype: str = "bfloat16", length_buckets=(2048, 4096, 8192),
                 patch_buckets=(8192, 16384), batch_buckets=(8,)) -> ml_collections.ConfigDict:
  """The model, mesh and sampler blocks `evejax.eval.cli.load` reads."""
  c = ml_collections.ConfigDict()
  c.seed = int(seed)
  c.model = cu.model(preset, dtype=dtype, param_dtype=dtype)
  c.init = cu.init(hf_dir)
  c.init.workdir, c.init.role, c.init.step = workdir, role, int(step)
  c.mesh = cu.mesh()
  c.mesh.devices = int(devices)
  c.processing = ml_collections.ConfigDict(dict(
      length_buckets=tuple(length_buckets), patch_buckets=tuple(patch_buckets),
      batch_buckets=tuple(batch_buckets)))
  return c


class EvejaxLMM(_LmmsBase):
  """lmms-eval's view of an evejax checkpoint (see the module docstring)."""
  is_simple = True

  def __init__(self, hf_dir: str = "", workdir: str = "", role: str = "solver", step: int = 0,
               preset: str = "qwen2_5_vl_7b", seed: int = 0, devices: int = -1,
               dtype: str = "bfloat16", max_new_tokens: int = 1024, length_buckets=None,
               patch_buckets=None, batch_buckets=None, min_pixels: int = 0,
               max_pixels: int = 0, system: str = "", batch_size: Any = 8, **unused):
    if ModelManifest is None:
      raise ImportError("evejax's lmms-eval model needs lmms-eval: pip install 'lmms-eval==0.7.3'")
    super().__init__()
    if unused:
      logging.warning("evejax lmms-eval model: ignoring model_args %s", sorted(unused))
    batch = int(batch_size) if str(batch_size).isdigit() else 8
    self.config = model_config(
        hf_dir=str(hf_dir or ""), workdir=str(workdir or ""), role=role, step=step,
        preset=preset, seed=seed, devices=devices, dtype=dtype,
        length_buckets=_sizes(length_buckets, (2048, 4096, 8192)),
        patch_buckets=_sizes(patch_buckets, (8192, 16384)),
        batch_buckets=_sizes(batch_buckets, (batch,)))
    self.loaded, self.model_info = cli.load(self.config)
    self.max_new_tokens = int(max_new_tokens)
    self.sampler = cli.make_sampler(self.config, self.loaded, self.max_new_tokens)
    self.min_pixels, self.max_pixels = int(min_pixels) or None, int(max_pixels) or None
    self.system = system or None
    self.batch_size_per_gpu = batch

  @property
  def batch_size(self) -> int:
    return self.batch_size_per_gpu

  # ------------------------------------------------------------------ prompts
  def example(self, context: str, images: Sequence[Any]):
    """One request as evejax's prompt (images first; lmms-eval's <image> tags dropped)."""
    images = [im.convert("RGB") if hasattr(im, "convert") else im for im in (images or [])]
    return prompts.user_prompt(self.loaded.model_config, self.loaded.tokenizer,
                               context.replace("<image>", ""), images,
                               min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                               system=self.system)

  def sampling(self, gen_kwargs: dict) -> SamplingParams:
    asked = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
    if asked > self.max_new_tokens:
      logging.warning("a task asks for %d new tokens; cut to max_new_tokens=%d", asked,
                      self.max_new_tokens)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    greedy = not gen_kwargs.get("do_sample", False) or temperature <= 0
    tok = self.loaded.tokenizer
    return SamplingParams(max_new_tokens=min(asked, self.max_new_tokens), greedy=greedy,
                          temperature=1.0 if greedy else temperature,
                          top_p=float(gen_kwargs.get("top_p") or 1.0), group_size=1,
                          eos_ids=tuple(tok.stop_ids), pad_id=tok.pad_id)

  # ----------------------------------------------------------------- requests
  def generate_until(self, requests) -> list[str]:
    """One reply per request, in order; grouped by generation settings, batched."""
    out: list[str] = [""] * len(requests)
    groups: dict[str, list[int]] = {}
    for k, request in enumerate(requests):
      groups.setdefault(repr(sorted(request.args[1].items(), key=str)), []).append(k)
    for indices in groups.values():
      gen_kwargs = dict(requests[indices[0]].args[1])
      until = gen_kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      asked, examples = [], []
      for k in indices:
        context, _, doc_to_visual, doc_id, task, split = requests[k].args
        images = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        ex = self.example(context, images)
        if (ex.num_tokens > max(self.sampler.length_buckets)
            or ex.num_patches > max(self.sampler.patch_buckets)):
          logging.warning("request %d of %s: prompt over the largest bucket; reply ''", doc_id,
                          task)
          continue
        asked.append(k)
        examples.append(ex)
      for start in range(0, len(examples), self.batch_size):
        part = examples[start:start + self.batch_size]
        sampled = self.sampler.generate(self.loaded.params, part, self.sampling(gen_kwargs),
                                        seed=int(self.config.seed) + start,
                                        prompt_ids=asked[start:start + self.batch_size])
        lengths, tokens = np.asarray(sampled.lengths), np.asarray(sampled.tokens)
        texts = self.loaded.tokenizer.decode_batch(
            [tokens[r, :lengths[r]] for r in range(len(part))], skip_special_tokens=True)
        for k, text in zip(asked[start:start + self.batch_size], texts):
          for stop in until:
            if stop:
              text = text.split(stop)[0]
          out[k] = text
    return out

  def loglikelihood(self, requests):
    raise NotImplementedError("evejax's lmms-eval model offers generate_until only.")

  def generate_until_multi_round(self, requests):
    raise NotImplementedError("evejax's lmms-eval model offers generate_until only.")
