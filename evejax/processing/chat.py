"""The Qwen-VL chat template, in Python, with image placeholders expanded.

A conversation renders as (the checkpoints' jinja templates, written out):

    <|im_start|>system\\n{default_system}<|im_end|>\\n
        (only when the first message is not a system message and the family
        has a default: Qwen2.5-VL's "You are a helpful assistant.", Qwen3-VL
        none; `families.Family.default_system`)
    <|im_start|>{role}\\n{content}<|im_end|>\\n   (each message)
    <|im_start|>assistant\\n                      (the generation prompt)
    <think>\\n  or  <think>\\n\\n</think>\\n\\n       (then, with `thinking` True
        or False: Qwen3.5's enable_thinking; None adds nothing, as the
        Qwen2.5-VL and Qwen3-VL templates do)

Content is a string or a list of parts: {"type": "text", "text": ...} or
{"type": "image"} (any part with an "image"/"image_url" key counts as an
image, as in the template). Each image becomes <|vision_start|>, then
t*h*w/merge_size**2 <|image_pad|> tokens for its grid, then <|vision_end|>,
exactly what transformers' processor produces after expanding the template.

Special tokens are inserted by id; message text is encoded with special-token
strings treated as plain text, so text cannot forge turns or image slots.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evejax.processing import images as images_lib
from evejax.processing import tokenizer as tokenizer_lib

DEFAULT_SYSTEM = "You are a helpful assistant."
Message = Mapping[str, Any]
Grid = tuple[int, int, int]

# A rendered piece: (is_special, text, is_assistant_content).
_Piece = tuple[bool, str, bool]


def _is_image(part: Mapping[str, Any]) -> bool:
  return (part.get("type") == "image" or "image" in part
          or "image_url" in part)


def _pieces(messages: Sequence[Message], grids: Sequence[Grid],
            add_generation_prompt: bool, default_system: str | None,
            merge_size: int, thinking: bool | None = None) -> list[_Piece]:
  pieces: list[_Piece] = []
  n_images = sum(1 for m in messages if not isinstance(m["content"], str)
                 for p in m["content"] if _is_image(p))
  if n_images != len(grids):
    raise ValueError(f"The messages hold {n_images} image parts but "
                     f"{len(grids)} grids were given; pass one grid per image, "
                     "in order.")
  grid_iter = iter(grids)

  def special(tok: str, assistant: bool = False):
    pieces.append((True, tok, assistant))

  def text(s: str, assistant: bool = False):
    pieces.append((False, s, assistant))

  for i, msg in enumerate(messages):
    role, content = msg["role"], msg["content"]
    if i == 0 and role != "system" and default_system is not None:
      special("<|im_start|>")
      text(f"system\n{default_system}")
      special("<|im_end|>")
      text("\n")
    special("<|im_start|>")
    text(f"{role}\n")
    is_asst = role == "assistant"
    if isinstance(content, str):
      text(content, is_asst)
    else:
      for part in content:
        if _is_image(part):
          n = images_lib.num_image_tokens(next(grid_iter), merge_size)
          special("<|vision_start|>", is_asst)
          pieces.extend([(True, "<|image_pad|>", is_asst)] * n)
          special("<|vision_end|>", is_asst)
        elif part.get("type") == "video" or "video" in part:
          raise ValueError("Video parts are not supported; pass frames as "
                           "images.")
        elif "text" in part:
          text(part["text"], is_asst)
        else:
          raise ValueError(f"Message {i} has a content part with neither "
                           f"text nor image: {dict(part)!r}.")
    special("<|im_end|>", is_asst)
    text("\n")
  if add_generation_prompt:
    special("<|im_start|>")
    text("assistant\n")
    if thinking is not None:
      special("<think>")
      if thinking:  # the model thinks first, then closes the block itself
        text("\n")
      else:         # an empty, closed think block: answer directly
        text("\n\n")
        special("</think>")
        text("\n\n")
  return pieces


def render_chat(messages: Sequence[Message], grids: Sequence[Grid] = (), *,
                add_generation_prompt: bool = True,
                default_system: str | None = DEFAULT_SYSTEM,
                merge_size: int = 2, thinking: bool | None = None) -> str:
  """The conversation as text, image placeholders expanded (for inspection)."""
  return "".join(s for _, s, _ in _pieces(
      messages, grids, add_generation_prompt, default_system, merge_size,
      thinking))


def encode_chat(tokenizer: tokenizer_lib.Tokenizer,
                messages: Sequence[Message], grids: Sequence[Grid] = (), *,
                add_generation_prompt: bool = True,
                default_system: str | None = DEFAULT_SYSTEM,
                merge_size: int = 2, return_assistant_mask: bool = False,
                thinking: bool | None = None):
  """Token ids int32 [T] of the conversation (one grid per image, in order).

  With `return_assistant_mask`, also returns int32 [T], 1 on the tokens of
  assistant messages' content and their closing <|im_end|> (the tokens an SFT
  loss trains). `thinking` (Qwen3.5's enable_thinking): the generation
  prompt opens a think block (True), closes an empty one (False), or has
  none (None). Text is then split at that boundary before encoding, which
  matches whole-string tokenization unless assistant content begins with
  whitespace that would merge with the role line's newline.
  """
  pieces = _pieces(messages, grids, add_generation_prompt, default_system,
                   merge_size, thinking)
  ids: list[int] = []
  mask: list[int] = []
  run: list[str] = []
  run_flag = False

  def flush():
    if run:
      chunk = tokenizer.encode("".join(run))
      ids.extend(chunk)
      mask.extend([int(run_flag)] * len(chunk))
      run.clear()

  for is_special, s, asst in pieces:
    flag = asst and return_assistant_mask
    if is_special:
      flush()
      tid = tokenizer.token_to_id(s)
      if tid is None:
        raise ValueError(f"Tokenizer {tokenizer.name} has no {s} token.")
      ids.append(tid)
      mask.append(int(flag))
    else:
      if run and flag != run_flag:
        flush()
      run_flag = flag
      run.append(s)
  flush()
  out = np.asarray(ids, np.int32)
  if return_assistant_mask:
    return out, np.asarray(mask, np.int32)
  return out
