"""One-turn prompts as the model family expects them: images + text -> Example.

Recipes and the evaluator build every prompt through `user_prompt`, so the
image processor, chat template and placeholder expansion of the model's family
are chosen in one place and no caller branches on the family.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from evejax.processing import batching
from evejax.processing import chat
from evejax.processing import images as images_lib


def user_prompt(model_config, tokenizer, text: str, images: Sequence[Any] = (), *,
                min_pixels: int, max_pixels: int,
                image_first: bool = True) -> batching.Example:
  """A one-turn user prompt (images, then text) ending in the assistant turn.

  Args:
    model_config: the model's `ModelConfig` (vision shapes, family).
    tokenizer: an `evejax.processing.tokenizer.Tokenizer`.
    text: the user's text.
    images: PIL images or uint8 arrays, in prompt order.
    min_pixels, max_pixels: the image processor's resize bounds.
    image_first: images before the text (the usual order) or after it.
  """
  v = model_config.vision
  patches = [images_lib.preprocess_image(
      im, min_pixels=min_pixels, max_pixels=max_pixels, patch_size=v.patch_size,
      temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size)
             for im in images]
  parts = [{"type": "image"} for _ in images]
  parts = (parts + [{"type": "text", "text": text}] if image_first
           else [{"type": "text", "text": text}] + parts)
  tokens = chat.encode_chat(tokenizer, [{"role": "user", "content": parts}],
                            [g for _, g in patches], merge_size=v.spatial_merge_size)
  return batching.Example(tokens=np.asarray(tokens, np.int32), images=patches)


def completion_ids(tokenizer, text: str) -> np.ndarray:
  """A target reply as the model should emit it: text, then end of turn."""
  return np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], np.int32)
