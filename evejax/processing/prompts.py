"""One-turn prompts as the model family expects them: images + text -> Example.

Recipes and the evaluator build every prompt through `user_prompt`, so the
image processor, chat template and placeholder expansion of the model's family
are chosen in one place and no caller branches on the family: Qwen2.5-VL's
template inserts "You are a helpful assistant." as the system message,
Qwen3-VL's and Qwen3.5's none, and Qwen3.5's opens a think block after the
generation prompt (or closes an empty one: `thinking`); the image settings are the family's
(`images.image_settings`), or those given.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from evejax.models import families
from evejax.processing import batching
from evejax.processing import chat
from evejax.processing import images as images_lib


def user_prompt(model_config, tokenizer, text: str, images: Sequence[Any] = (), *,
                min_pixels: int | None = None, max_pixels: int | None = None,
                image_first: bool = True,
                settings: images_lib.ImageSettings | None = None,
                system: str | None = None,
                thinking: bool | None = None) -> batching.Example:
  """A one-turn user prompt (images, then text) ending in the assistant turn.

  Args:
    model_config: the model's `ModelConfig` (vision shapes, family).
    tokenizer: an `evejax.processing.tokenizer.Tokenizer`.
    text: the user's text.
    images: PIL images or uint8 arrays, in prompt order.
    min_pixels, max_pixels: the image processor's resize bounds (None: those
      of `settings`).
    image_first: images before the text (the usual order) or after it.
    settings: the image processor (default: the family's,
      `images.image_settings(model_config)`; pass
      `image_settings(model_config, checkpoint_dir)` to use a checkpoint's
      preprocessor_config.json).
    system: a system message (None: the family's default, if it has one).
    thinking: for a family whose template has a think switch (Qwen3.5's
      enable_thinking), open a think block (True) or close an empty one
      (False); None: the family's default (`Family.thinking`).
  """
  if settings is None:
    settings = images_lib.image_settings(model_config)
  if min_pixels is not None or max_pixels is not None:
    settings = settings.replace(
        min_pixels=settings.min_pixels if min_pixels is None else int(min_pixels),
        max_pixels=settings.max_pixels if max_pixels is None else int(max_pixels))
  patches = [settings.preprocess(im) for im in images]
  parts = [{"type": "image"} for _ in images]
  parts = (parts + [{"type": "text", "text": text}] if image_first
           else [{"type": "text", "text": text}] + parts)
  messages = [{"role": "user", "content": parts}]
  if system is not None:
    messages.insert(0, {"role": "system", "content": system})
  family = families.of(model_config)
  if family.thinking is None:
    thinking = None   # the template has no think switch
  elif thinking is None:
    thinking = family.thinking
  tokens = chat.encode_chat(
      tokenizer, messages, [g for _, g in patches],
      merge_size=model_config.vision.spatial_merge_size,
      default_system=family.default_system, thinking=thinking)
  return batching.Example(tokens=np.asarray(tokens, np.int32), images=patches)


def completion_ids(tokenizer, text: str) -> np.ndarray:
  """A target reply as the model should emit it: text, then end of turn."""
  return np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], np.int32)
