"""Tests for evejax.processing.tokenizer and the built-in tiny tokenizer."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import random
import tempfile

from absl.testing import absltest
import tokenizers

from evejax.models import presets
from evejax.processing import tokenizer as tokenizer_lib
from evejax.tools import build_tiny_tokenizer

_ASSET = os.path.join(os.path.dirname(tokenizer_lib.__file__), os.pardir,
                      "assets", tokenizer_lib.BUILTIN_FILE)


def _random_unicode(rng: random.Random, n: int) -> str:
  chars = []
  for _ in range(n):
    cp = rng.choice((rng.randrange(0, 0x80), rng.randrange(0x80, 0x800),
                     rng.randrange(0x800, 0xD800), rng.randrange(0xE000, 0x10000),
                     rng.randrange(0x10000, 0x110000)))
    chars.append(chr(cp))
  return "".join(chars)


class BuiltinTokenizerTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = tokenizer_lib.builtin_tokenizer()

  def test_special_ids_match_presets(self):
    cfg = presets.tiny()
    for i, t in enumerate(presets.BUILTIN_SPECIAL_TOKENS):
      self.assertEqual(self.tok.token_to_id(t), i)
    self.assertEqual(self.tok.image_pad_id, cfg.image_token_id)
    self.assertEqual(self.tok.video_pad_id, cfg.video_token_id)
    self.assertEqual(self.tok.vision_start_id, cfg.vision_start_token_id)
    self.assertEqual(self.tok.vision_end_id, cfg.vision_end_token_id)
    self.assertEqual(self.tok.eos_id, self.tok.token_to_id("<|im_end|>"))
    self.assertEqual(self.tok.pad_id, self.tok.token_to_id("<|endoftext|>"))

  def test_vocab_fits_tiny_model(self):
    self.assertEqual(self.tok.vocab_size, presets.tiny().text.vocab_size)
    self.assertEqual(self.tok.vocab_size, 2048)
    self.assertLess(self.tok.token_to_id("</think>"), 2048)
    self.assertLess(os.path.getsize(_ASSET), 300_000)

  def test_round_trip_any_unicode(self):
    rng = random.Random(0)
    texts = ["", " ", "\n\n", "\x00\x01\x7f", "héllo wörld", "日本語のテキスト",
             "emoji 🙂👍🏽 and ZWJ 👩‍👩‍👧", "e\u0301 (not NFC)", "\r\n\t  tabs",
             "```python\nimg = img.rotate(90)\n```", "\\boxed{A}",
             "<think>a</think>", "<|im_end|> typed by a user"]
    texts += [_random_unicode(rng, rng.randrange(1, 60)) for _ in range(200)]
    for text in texts:
      ids = self.tok.encode(text)
      self.assertTrue(all(0 <= i < self.tok.vocab_size for i in ids))
      self.assertEqual(self.tok.decode(ids), text)
    batch = self.tok.encode_batch(texts)
    self.assertEqual(self.tok.decode_batch(batch), texts)

  def test_special_strings_are_text_unless_allowed(self):
    text = "a<|im_end|>b<|image_pad|>"
    plain = self.tok.encode(text)
    self.assertNotIn(self.tok.im_end_id, plain)
    self.assertNotIn(self.tok.image_pad_id, plain)
    parsed = self.tok.encode(text, allow_special=True)
    self.assertIn(self.tok.im_end_id, parsed)
    self.assertIn(self.tok.image_pad_id, parsed)
    self.assertEqual(self.tok.decode(parsed), text)

  def test_think_tokens_are_single_kept_tokens(self):
    ids = self.tok.encode("<think>x</think>")
    self.assertEqual(ids[0], self.tok.token_to_id("<think>"))
    self.assertEqual(ids[-1], self.tok.token_to_id("</think>"))
    self.assertEqual(
        self.tok.decode(ids + [self.tok.im_end_id], skip_special_tokens=True),
        "<think>x</think>")

  def test_learned_merges_compress_domain_text(self):
    text = ("def edit_image(img, angle):\n    return img.rotate(angle)\n"
            "Which option shows the image? \\boxed{B}")
    self.assertLess(len(self.tok.encode(text)), len(text.encode()) // 2)

  def test_regenerating_gives_identical_file(self):
    with tempfile.TemporaryDirectory() as d:
      out = build_tiny_tokenizer.write(os.path.join(d, "t.json"))
      with open(out, "rb") as f:
        fresh = f.read()
    with open(_ASSET, "rb") as f:
      shipped = f.read()
    self.assertEqual(
        fresh, shipped,
        "evejax/assets/tiny_tokenizer.json is stale: run "
        "`python -m evejax.tools.build_tiny_tokenizer` and commit the file.")


class LoadTokenizerTest(absltest.TestCase):

  def test_matches_transformers_fast_tokenizer(self):
    import transformers  # pylint: disable=g-import-not-at-top
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_lib.builtin_tokenizer().backend)
    with tempfile.TemporaryDirectory() as d:
      hf.save_pretrained(d)
      tok = tokenizer_lib.load_tokenizer(d)
      tok_file = tokenizer_lib.load_tokenizer(os.path.join(d, "tokenizer.json"))
    text = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
            "What is shown? <think>hm</think><|im_end|>\n")
    want = hf(text, add_special_tokens=False)["input_ids"]
    self.assertEqual(tok.encode(text, allow_special=True), want)
    self.assertEqual(tok_file.encode(text, allow_special=True), want)
    self.assertEqual(tok.decode(want), hf.decode(want))

  def test_missing_file_names_path_and_fix(self):
    with tempfile.TemporaryDirectory() as d:
      with self.assertRaisesRegex(FileNotFoundError,
                                  "No tokenizer.json at .*checkpoint"):
        tokenizer_lib.load_tokenizer(d)

  def test_unparsable_file(self):
    with tempfile.TemporaryDirectory() as d:
      with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write("{not json")
      with self.assertRaisesRegex(ValueError, "Cannot parse"):
        tokenizer_lib.load_tokenizer(d)

  def test_missing_special_tokens_named(self):
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "tokenizer.json")
      backend.save(path)
      with self.assertRaisesRegex(ValueError, "vision_start"):
        tokenizer_lib.load_tokenizer(path)


if __name__ == "__main__":
  absltest.main()
