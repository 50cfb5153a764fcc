"""The judge: a local checkpoint asked the reference's judge questions, on the same mesh.

The papers send what their rules leave undecided to an LLM judge (VLMEvalKit's
GPT matcher for multiple choice and yes/no, its GPT extractor for MathVista;
lmms-eval's GPT extractor for MathVista; MM-Zero's Qwen2.5-14B-Instruct for
every answer). evejax stands a local checkpoint in for it:

    --config.eval.judge.hf_dir=/models/Qwen2.5-VL-7B-Instruct

Any family evejax loads works; it is read through `evejax.loading` onto a
mesh built from the evaluation's `mesh` block (the same devices; both models
are resident), and it gets its own `Sampler` for text-only prompts
(`eval.judge.length_buckets`). The questions are the references' prompts
(scoring.py builds them), decoded greedily and short: each request carries
its reference's token budget (32 for the matcher, 128 / 256 for the
MathVista extractors, 16 with a newline stop for MM-Zero); one batched
`generate` per chunk of items. A prompt longer than the largest length
bucket is not judged: the item keeps its rule verdict and is counted as
`judge_skipped`.

`eval.judge.fn='pkg.module:function'` stays as an extension point: a Python
callable `fn(item, reply, grade) -> score | None`, called on each item the
rule leaves undecided (None keeps the rule's score).
"""
from __future__ import annotations

import copy
import importlib
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from evejax import loading
from evejax.eval import scoring
from evejax.processing import batching
from evejax.processing import prompts
from evejax.sampling import Sampler
from evejax.sampling import SamplingParams

# The largest budget any reference judge asks for (lmms-eval's MathVista extractor).
DEFAULT_MAX_NEW_TOKENS = 256


class JudgeError(ValueError):
  """A judge config a user can fix."""


def config_block() -> ml_collections.ConfigDict:
  """The `eval.judge` block; hf_dir (or preset) turns the local judge on."""
  return ml_collections.ConfigDict(dict(
      hf_dir="",           # a local HF checkpoint of the judge ("" = none)
      preset="",           # a random model preset instead of hf_dir (tests only)
      tokenizer_dir="",    # "" = hf_dir's tokenizer
      dtype="bfloat16", param_dtype="bfloat16",
      length_buckets=(1024, 4096),   # judge prompt lengths (a longer one is not judged)
      batch_buckets=(8,),            # judge prompts per generate chunk
      max_new_tokens=DEFAULT_MAX_NEW_TOKENS,   # cap over the references' budgets
      fn="",               # 'pkg.module:function' callable judge instead (extension point)
  ))


def _resolve_callable(path: str) -> Callable:
  module_name, _, attr = path.partition(":")
  if not attr:
    module_name, _, attr = path.rpartition(".")
  try:
    fn = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError, ValueError) as e:
    raise JudgeError(f"eval.judge.fn={path!r} cannot be imported ({e}); write it as "
                     "'package.module:function'.") from None
  if not callable(fn):
    raise JudgeError(f"eval.judge.fn={path!r} is not callable.")
  return fn


class CallableJudge:
  """The extension hook: fn(item, reply, grade) -> score | None on undecided items."""

  def __init__(self, fn: Callable, name: str):
    self.fn, self.name = fn, name

  def describe(self) -> dict[str, Any]:
    return {"kind": "callable", "fn": self.name}


class LocalJudge:
  """A checkpoint answering judge prompts greedily through its own `Sampler`.

  Args:
    loaded: the judge model (`loading.LoadedModel`).
    name: how results name it (its checkpoint directory or preset).
    length_buckets, batch_buckets: the judge sampler's static sizes.
    max_new_tokens: the most new tokens any request gets.
  """

  def __init__(self, loaded: loading.LoadedModel, *, name: str,
               length_buckets: Sequence[int] = (1024, 4096), batch_buckets: Sequence[int] = (8,),
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    self.name = name
    self.model_config, self.tokenizer, self.params = (loaded.model_config, loaded.tokenizer,
                                                      loaded.params)
    self.max_new_tokens = int(max_new_tokens)
    self.sampler = Sampler(loaded.model_config, mesh=loaded.mesh, rules=loaded.rules,
                           length_buckets=tuple(length_buckets), patch_buckets=(0,),
                           batch_buckets=tuple(batch_buckets),
                           max_cache=max(length_buckets) + self.max_new_tokens,
                           prompt_pad_id=loaded.tokenizer.pad_id)

  def describe(self) -> dict[str, Any]:
    return {"kind": "local", "model": self.name, "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "length_buckets": list(self.sampler.length_buckets)}

  def example(self, request: scoring.JudgeRequest) -> batching.Example:
    """The request as tokens: the judge's chat template, or the raw text (MM-Zero)."""
    if request.chat:
      return prompts.user_prompt(self.model_config, self.tokenizer, request.prompt)
    return batching.Example(tokens=np.asarray(self.tokenizer.encode(request.prompt), np.int32))

  def complete(self, requests: Sequence[scoring.JudgeRequest], seed: int = 0
               ) -> list[str | None]:
    """The judge's text for each request; None for a prompt over the largest bucket."""
    out: list[str | None] = [None] * len(requests)
    examples, asked = [], []
    for k, request in enumerate(requests):
      ex = self.example(request)
      if ex.num_tokens <= max(self.sampler.length_buckets):
        examples.append(ex)
        asked.append(k)
    if not examples:
      return out
    budget = min(self.max_new_tokens, max(requests[k].max_new_tokens for k in asked))
    # Greedy decoding: a shorter budget's text is a prefix of this one's.
    sampled = self.sampler.generate(self.params, examples, SamplingParams(
        max_new_tokens=budget, greedy=True, group_size=1,
        eos_ids=tuple(self.tokenizer.stop_ids), pad_id=self.tokenizer.pad_id), seed)
    lengths, tokens = np.asarray(sampled.lengths), np.asarray(sampled.tokens)
    texts = self.tokenizer.decode_batch(
        [tokens[row, :min(int(lengths[row]), requests[k].max_new_tokens)]
         for row, k in enumerate(asked)], skip_special_tokens=True)
    for k, text in zip(asked, texts):
      out[k] = text.split("\n")[0] if requests[k].stop_at_newline else text
    return out


def _judge_model_config(config, block):
  """The evaluation's config with the judge's model and init (same mesh, same seed)."""
  judge_config = copy.deepcopy(config)
  with judge_config.unlocked():
    judge_config.init.hf_dir = block.hf_dir
    judge_config.init.tokenizer_dir = block.tokenizer_dir
    judge_config.init.workdir = ""
    if block.preset:
      judge_config.model.preset = block.preset
    judge_config.model.dtype, judge_config.model.param_dtype = block.dtype, block.param_dtype
  return judge_config


def block_of(config) -> ml_collections.ConfigDict:
  """config.eval.judge as a block; an old string value is read as the callable."""
  block = config.eval.get("judge")
  if isinstance(block, str) or block is None:
    legacy = config_block()
    legacy.fn = block or ""
    return legacy
  return block


def check(config) -> None:
  """Fails (JudgeError) on a judge block that cannot work, before any model loads."""
  block = block_of(config)
  if (block.get("hf_dir") or block.get("preset")) and block.get("fn"):
    raise JudgeError("eval.judge names both a model (hf_dir/preset) and a callable (fn); "
                     "set one of them.")
  if block.get("fn"):
    _resolve_callable(block.fn)


def from_config(config):
  """The judge `config.eval.judge` names: a LocalJudge, a CallableJudge, or None."""
  check(config)
  block = block_of(config)
  if block.get("fn"):
    return CallableJudge(_resolve_callable(block.fn), block.fn)
  if not (block.get("hf_dir") or block.get("preset")):
    return None
  loaded = loading.load_model(_judge_model_config(config, block))
  return LocalJudge(loaded, name=block.hf_dir or f"preset:{block.preset}",
                    length_buckets=tuple(block.length_buckets),
                    batch_buckets=tuple(block.batch_buckets),
                    max_new_tokens=int(block.max_new_tokens))
