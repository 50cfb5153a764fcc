"""Tokenizers: a checkpoint's tokenizer.json, or the built-in tiny one.

`Tokenizer` wraps a `tokenizers.Tokenizer` (the Rust library that HF's fast
tokenizers use, so ids match transformers exactly) and names the special ids
the rest of evejax needs: end of turn, padding, and the image placeholders.

Special-token strings inside *text* are not parsed by default
(`encode(text)` turns "<|im_end|>" typed by a user or written by a model into
plain bytes), so untrusted text can never forge turn boundaries or image
placeholders; `chat.encode_chat` inserts the real special ids itself. Pass
`allow_special=True` to parse them, as HF's tokenizer does.

Qwen2.5-VL and Qwen3-VL share the chat and image tokens (the same strings at
the same ids, 151643..151656); Qwen3's tokenizer adds <tool_response> and
<think>/</think> (151665..151668), which the built-in one carries as <think>
and </think>. A Qwen tokenizer has fewer ids (151665 / 151669) than the
model's embedding table (151936 / 152064); `vocab_size` is the tokenizer's.
Qwen3.5's vocabulary has the same special-token strings at new ids
(<|endoftext|> 248044 ... <|image_pad|> 248056, <think> 248068) and a
248,320-row table: the same names serve it, and the built-in tokenizer
already carries every one its chat template uses (`qwen3_5_tiny`).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
import importlib.resources
import os

import numpy as np
import tokenizers

from evejax.models import presets

# Tokens evejax relies on: chat turns, padding and image placeholders.
REQUIRED_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                   "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
BUILTIN_FILE = "tiny_tokenizer.json"


class Tokenizer:
  """Text <-> ids, plus the special ids of the Qwen-VL chat format."""

  def __init__(self, backend: tokenizers.Tokenizer, name: str = "<memory>"):
    self.name = name
    self._tok = backend
    missing = [t for t in REQUIRED_TOKENS if backend.token_to_id(t) is None]
    if missing:
      raise ValueError(
          f"Tokenizer {name} lacks the special tokens {missing}; evejax needs "
          f"{list(REQUIRED_TOKENS)}. Use a Qwen2.5-VL, Qwen3-VL or Qwen3.5 "
          "tokenizer.json, or builtin_tokenizer().")
    # A second copy that treats special-token strings as plain text: the flag
    # is a property of the Rust object, so flipping it per call would race.
    self._plain = tokenizers.Tokenizer.from_str(backend.to_str())
    self._plain.encode_special_tokens = True
    self.endoftext_id = backend.token_to_id("<|endoftext|>")
    self.im_start_id = backend.token_to_id("<|im_start|>")
    self.im_end_id = backend.token_to_id("<|im_end|>")
    self.vision_start_id = backend.token_to_id("<|vision_start|>")
    self.vision_end_id = backend.token_to_id("<|vision_end|>")
    self.image_pad_id = backend.token_to_id("<|image_pad|>")
    self.video_pad_id = backend.token_to_id("<|video_pad|>")  # may be None

  @property
  def backend(self) -> tokenizers.Tokenizer:
    return self._tok

  @property
  def vocab_size(self) -> int:
    """Number of ids, added tokens included (max id + 1)."""
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def eos_id(self) -> int:
    """End of an assistant turn: where generation stops."""
    return self.im_end_id

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Ids that end generation (as Qwen's generation_config does)."""
    return (self.im_end_id, self.endoftext_id)

  @property
  def pad_id(self) -> int:
    return self.endoftext_id

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self._tok.id_to_token(int(token_id))

  def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
    """Ids of `text`; no BOS/EOS are added (Qwen has none)."""
    tok = self._tok if allow_special else self._plain
    return tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str], *,
                   allow_special: bool = False) -> list[list[int]]:
    """`encode` of many texts, in parallel threads."""
    tok = self._tok if allow_special else self._plain
    return [e.ids for e in tok.encode_batch(list(texts),
                                            add_special_tokens=False)]

  def decode(self, ids: Iterable[int] | np.ndarray, *,
             skip_special_tokens: bool = False) -> str:
    return self._tok.decode([int(i) for i in ids],
                            skip_special_tokens=skip_special_tokens)

  def decode_batch(self, seqs: Iterable[Iterable[int]], *,
                   skip_special_tokens: bool = False) -> list[str]:
    return self._tok.decode_batch(
        [[int(i) for i in s] for s in seqs],
        skip_special_tokens=skip_special_tokens)

  def __repr__(self) -> str:
    return f"Tokenizer({self.name}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Loads `tokenizer.json` from a checkpoint directory (or the file itself)."""
  path = os.fspath(path)
  file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise FileNotFoundError(
        f"No tokenizer.json at {file}. Point the tokenizer path at a Hugging "
        "Face checkpoint directory that contains tokenizer.json (download the "
        "whole repository), or use the built-in tokenizer for tiny models.")
  try:
    backend = tokenizers.Tokenizer.from_file(file)
  except Exception as e:  # The Rust side raises a bare Exception.
    raise ValueError(f"Cannot parse {file} as a tokenizers JSON file ({e}); "
                     "re-download it from the checkpoint.") from e
  return Tokenizer(backend, name=file)


def builtin_tokenizer() -> Tokenizer:
  """The tiny tokenizer shipped with evejax (2048 ids; see build_tiny_tokenizer).

  Its special tokens sit at ids 0..6 in the order of
  `presets.BUILTIN_SPECIAL_TOKENS`, which is what `presets.tiny()` and
  `presets.qwen3_vl_tiny()` assume.
  """
  res = importlib.resources.files("evejax") / "assets" / BUILTIN_FILE
  backend = tokenizers.Tokenizer.from_str(res.read_text(encoding="utf-8"))
  tok = Tokenizer(backend, name=f"builtin:{BUILTIN_FILE}")
  for i, t in enumerate(presets.BUILTIN_SPECIAL_TOKENS):
    # Guards the contract with presets.tiny() should either side change.
    assert tok.token_to_id(t) == i, (t, tok.token_to_id(t), i)
  return tok
