"""Malformed data from users through every data source kind, and broken HF directories.

A corpus made here with PIL (nothing committed): images that must be read
right although unusual (CMYK, 16-bit, float, palette or grey with
transparency, animated, EXIF-rotated, 1-bit, 1x1) and files that cannot be
read (empty, truncated, not images, decompression bombs, too elongated, a
missing path). Through a folder, a JSONL manifest with bad lines and a TFDS
dataset (a stand-in module): every item comes back as an RGB image of the
size `size_of` promised, every skip is counted by reason, and what cannot go
on is one SourceError naming the path. HF checkpoint directories that cannot
load are one SetupError naming the directory, and a run ends with one line.
"""
import io
import json
import os
import pathlib
import struct
import sys
import tempfile
import types
import zlib
from unittest import mock

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl.testing import absltest  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from evejax import config_utils as cu  # noqa: E402
from evejax import loading  # noqa: E402
from evejax.data import sources  # noqa: E402

RED, WHITE = (255, 0, 0), (255, 255, 255)
SOURCE = dict(shuffle=False, min_pixels=16 * 16, max_pixels=64 * 64)


def _png_bomb(path, side=8000):
  """A valid 8x8 PNG whose header declares side x side pixels."""
  buf = io.BytesIO()
  Image.new("RGB", (8, 8), RED).save(buf, format="PNG")
  data = bytearray(buf.getvalue())
  data[16:24] = struct.pack(">II", side, side)
  data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
  path.write_bytes(bytes(data))


def _truncated(path, image, fmt, keep=0.5):
  buf = io.BytesIO()
  image.save(buf, format=fmt)
  path.write_bytes(buf.getvalue()[:int(len(buf.getvalue()) * keep)])


def _noise(size=(64, 64)):
  return Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), np.uint8))


def make_corpus(root: pathlib.Path) -> tuple[dict, dict]:
  """Writes the corpus; returns ({name: check(image) for readable files},
  {name: skip reason for unreadable ones})."""
  root.mkdir(parents=True, exist_ok=True)
  readable, unreadable = {}, {}

  def keep(name, check):
    readable[name] = check

  Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(root / "cmyk.jpg")
  keep("cmyk.jpg", lambda im: np.allclose(im.getpixel((16, 16)), RED, atol=40))
  gradient = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
  Image.fromarray(gradient).save(root / "gray16.png")
  keep("gray16.png", lambda im: 40 < np.asarray(im).mean() < 215)   # scaled, not white
  Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)).save(
      root / "float.tif")
  keep("float.tif", lambda im: 40 < np.asarray(im).mean() < 215)    # scaled, not black
  Image.fromarray(gradient.astype(np.int32)).save(root / "int32.tif")
  keep("int32.tif", lambda im: 40 < np.asarray(im).mean() < 215)
  pal = Image.new("P", (32, 32), 0)
  pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
  pal.paste(1, (0, 0, 16, 32))
  pal.save(root / "palette_transparent.png", transparency=0)
  keep("palette_transparent.png",
       lambda im: im.getpixel((4, 16)) == RED and im.getpixel((28, 16)) == WHITE)
  pal.save(root / "palette_transparent.gif", transparency=0)
  keep("palette_transparent.gif", lambda im: im.getpixel((28, 16)) == WHITE)
  Image.new("LA", (32, 32), (0, 0)).save(root / "grey_alpha.png")
  keep("grey_alpha.png", lambda im: im.getpixel((16, 16)) == WHITE)
  frames = [Image.new("RGB", (32, 32), c) for c in (RED, (0, 255, 0), (0, 0, 255))]
  frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
  keep("animated.gif", lambda im: np.allclose(im.getpixel((16, 16)), RED, atol=10))
  frames[0].save(root / "animated.webp", save_all=True, append_images=frames[1:],
                 lossless=True)
  keep("animated.webp", lambda im: np.allclose(im.getpixel((16, 16)), RED, atol=10))
  sideways = Image.new("RGB", (40, 20), RED)
  sideways.paste((0, 0, 255), (20, 0, 40, 20))   # left red, right blue as stored
  exif = Image.Exif()
  exif[0x0112] = 6   # displayed turned 90 degrees clockwise: 20 wide, 40 tall
  sideways.save(root / "exif_rotated.jpg", exif=exif, quality=95)
  keep("exif_rotated.jpg", lambda im: im.height > im.width
       and im.getpixel((im.width // 2, 2))[0] > 200)   # stored left (red) is now on top
  Image.new("1", (32, 32), 1).save(root / "bilevel.png")
  keep("bilevel.png", lambda im: im.getpixel((3, 3)) == WHITE)
  Image.new("RGB", (1, 1), RED).save(root / "one_pixel.png")
  keep("one_pixel.png", lambda im: im.width * im.height >= 16 * 16)
  Image.new("L", (32, 32), 128).save(root / "grey.bmp")
  keep("grey.bmp", lambda im: im.getpixel((3, 3)) == (128, 128, 128))
  Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(root / "transparent.webp", lossless=True)
  keep("transparent.webp", lambda im: im.getpixel((3, 3)) == WHITE)

  (root / "empty.png").write_bytes(b"")
  unreadable["empty.png"] = "empty"
  _truncated(root / "truncated.png", _noise(), "PNG")
  unreadable["truncated.png"] = "unreadable"
  _truncated(root / "truncated.jpg", _noise(), "JPEG", keep=0.6)
  unreadable["truncated.jpg"] = "unreadable"
  _truncated(root / "header_only.png", _noise(), "PNG", keep=0.02)
  unreadable["header_only.png"] = "unreadable"
  (root / "text.png").write_text("this is not an image\n")
  unreadable["text.png"] = "not_an_image"
  (root / "page.jpg").write_text("<html><body>404 Not Found</body></html>")
  unreadable["page.jpg"] = "not_an_image"
  _png_bomb(root / "bomb.png")
  unreadable["bomb.png"] = "too_large"
  gif = bytearray(open(root / "animated.gif", "rb").read())
  gif[6:10] = struct.pack("<HH", 65535, 65535)   # the logical screen: 4.3e9 pixels
  (root / "bomb.gif").write_bytes(bytes(gif))
  unreadable["bomb.gif"] = "too_large"
  Image.new("RGB", (1, 400), RED).save(root / "needle.png")
  unreadable["needle.png"] = "extreme_aspect"
  # Not listed by a folder source (not files, or not images by extension).
  (root / "folder.png").mkdir()
  (root / "notes.txt").write_text("notes")
  (root / "labels.json").write_text("{}")
  os.symlink(root / "gone.png", root / "dangling.png")
  return readable, unreadable


class CorpusThroughSourcesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = pathlib.Path(tempfile.mkdtemp()) / "images"
    cls.readable, cls.unreadable = make_corpus(cls.root)
    assert len(cls.readable) + len(cls.unreadable) >= 20

  def _check_every_item(self, src, keys_by_index):
    sources.take_skips()
    want_skips = {}
    for i in range(len(src)):
      with self.subTest(keys_by_index[i]):
        key, image = src.item(i)
        self.assertEqual(image.mode, "RGB")
        self.assertEqual(image.size, src.size_of(i))   # what every process planned with
        self.assertLessEqual(image.width * image.height, 64 * 64 + 64)
        name = keys_by_index[i]
        if name in self.readable:
          self.assertTrue(self.readable[name](image), name)
        else:
          reason = self.unreadable.get(name, "missing")
          want_skips[reason] = want_skips.get(reason, 0) + 1
          self.assertNotEqual(key, name)   # a readable stand-in
    return want_skips

  def test_a_folder(self):
    with self.assertLogs(level="WARNING") as logs:
      src = sources.folder_images(self.root, **SOURCE)
    self.assertIn("ignoring 2 files that are not images", logs.output[0])
    names = [key for key, _ in src.entries]
    self.assertCountEqual(names, list(self.readable) + list(self.unreadable))
    with self.assertLogs(level="WARNING") as logs:
      want = self._check_every_item(src, names)
    self.assertEqual(sources.take_skips(), want)
    self.assertEqual(sum(want.values()), len(self.unreadable))
    # Each bad file is named once in the log, with its fix.
    self.assertLen([m for m in logs.output if "Skipping an image" in m], len(self.unreadable))
    self.assertTrue(any("bomb.png declares 8000x8000" in m for m in logs.output))
    self.assertTrue(any("bomb.gif" in m and "decompression bomb" in m for m in logs.output))
    # A second pass reads nothing bad again but counts every skip again.
    for i in range(len(src)):
      src.item(i)
    self.assertEqual(sources.take_skips(), want)

  def test_a_jsonl_manifest_with_bad_lines(self):
    names = list(self.readable) + list(self.unreadable) + ["no_such_file.png"]
    lines = ["\ufeff" + json.dumps({"image": f"images/{names[0]}"})]   # a byte-order mark
    lines += [json.dumps({"image": f"images/{n}", "id": n}) for n in names[1:]]
    bad = ["{not json", "[1, 2]", json.dumps({"path": "images/cmyk.jpg"}),
           json.dumps({"image": 7}), '"just a string"']
    manifest = self.root.parent / "manifest.jsonl"
    manifest.write_bytes("\r\n".join(lines[:3] + bad + [""] + lines[3:]).encode())
    with self.assertLogs(level="WARNING") as logs:
      src = sources.jsonl_images(manifest, **SOURCE)
    self.assertEqual(src.skipped["bad_manifest_line"], len(bad))
    self.assertIn("manifest.jsonl:4 is not valid JSON", logs.output[0])
    self.assertLen(src, len(names))
    keys = [key for key, _ in src.entries]
    keys[0] = names[0]
    want = self._check_every_item(src, keys)
    self.assertEqual(want["missing"], 1)
    self.assertEqual(sources.take_skips(), want)

  def test_what_cannot_go_on_is_one_message_naming_the_path(self):
    bad = self.root.parent / "bad_only"
    bad.mkdir(exist_ok=True)
    (bad / "a.png").write_bytes(b"")
    (bad / "b.jpg").write_text("nope")
    cases = [
        (lambda: sources.make_source({"kind": "folder", "path": str(bad / "nowhere")}),
         "nowhere does not exist"),
        (lambda: sources.make_source({"kind": "folder", "path": str(bad)}).item(0),
         r"None of the 2 images .*a\.png is an empty file"),
        (lambda: sources.make_source({"kind": "jsonl", "path": str(bad / "x.jsonl")}),
         r"x\.jsonl does not exist"),
    ]
    (bad / "junk.jsonl").write_text("{oops\n[]\n")
    cases.append((lambda: sources.make_source({"kind": "jsonl", "path": str(bad / "junk.jsonl")}),
                  r"junk\.jsonl has no usable entries \(.*junk\.jsonl:1 is not valid JSON"))
    (bad / "empty.jsonl").write_text("\n\n")
    cases.append((lambda: sources.make_source({"kind": "jsonl",
                                               "path": str(bad / "empty.jsonl")}),
                  r"empty\.jsonl has no usable entries\. Each line"))
    for make, pattern in cases:
      with self.subTest(pattern):
        with self.assertRaisesRegex(sources.SourceError, pattern):
          with self.assertLogs(level="WARNING"):   # skipped files are named as they go
            make()
            sources.logging.warning("nothing skipped")


class TfdsSourceTest(absltest.TestCase):
  """TFDS through a stand-in `tensorflow_datasets` (the real one is optional)."""

  def _fake_tfds(self, examples):
    class DatasetNotFoundError(Exception):
      pass

    def data_source(name, split, data_dir, download):
      del data_dir, download
      if name != "tiny_pictures":
        raise DatasetNotFoundError(f"Dataset {name} not found. Available: ['tiny_pictures']")
      if split != "train":
        raise ValueError(f"Unknown split {split!r}; available: ['train']")
      return examples

    return types.SimpleNamespace(data_source=data_source)

  def test_bad_examples_are_skipped_and_a_wrong_name_is_one_message(self):
    examples = [{"image": np.full((20, 30, 3), 200, np.uint8)},
                {"image": np.zeros((20, 30, 2), np.float64)},      # two channels: no image
                {"image": np.zeros((0, 30, 3), np.uint8)},         # no pixels
                {"image": np.full((20, 30, 1), 90, np.uint8)}]
    with mock.patch.dict(sys.modules, {"tensorflow_datasets": self._fake_tfds(examples)}):
      cfg = {"kind": "tfds", "name": "tiny_pictures", "split": "train", **SOURCE}
      src = sources.make_source(cfg)
      sources.take_skips()
      with self.assertLogs(level="WARNING"):
        got = [src.item(i) for i in range(4)]
      self.assertEqual([k for k, _ in got], ["tfds:tiny_pictures/train/0",
                                             "tfds:tiny_pictures/train/3",
                                             "tfds:tiny_pictures/train/3",
                                             "tfds:tiny_pictures/train/3"])
      self.assertEqual(got[3][1].getpixel((0, 0)), (90, 90, 90))
      self.assertEqual(sum(sources.take_skips().values()), 2)
      with self.assertRaisesRegex(sources.SourceError,
                                  r"Cannot open TFDS dataset 'tiny_pictres'.*not found"
                                  r".*Check data\.name and data\.split"):
        sources.make_source({**cfg, "name": "tiny_pictres"})
      with self.assertRaisesRegex(sources.SourceError, "Unknown split 'tran'"):
        sources.make_source({**cfg, "split": "tran"})
      with self.assertRaisesRegex(sources.SourceError, "no feature 'picture'"):
        sources.make_source({**cfg, "image_key": "picture"}).item(0)


def _hf_config(hf_dir: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = cu.model("tiny")
  c.init = cu.init(hf_dir)
  c.mesh = cu.mesh()
  c.mesh.devices = 1
  return c


@pytest.mark.slow   # about 9 s: a tiny checkpoint written and loaded 7 times
class HfDirectoryTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    import jax  # pylint: disable=g-import-not-at-top
    from evejax.models import hf, presets, vlm  # pylint: disable=g-import-not-at-top
    from evejax.processing import tokenizer  # pylint: disable=g-import-not-at-top
    cls.good = os.path.join(tempfile.mkdtemp(), "tiny")
    config = presets.tiny()
    params = vlm.init_params(config, jax.random.PRNGKey(0))
    hf.save_params(params, config, cls.good, max_shard_bytes=1 << 20)   # several shards
    with open(os.path.join(cls.good, "tokenizer.json"), "w") as f:
      f.write(tokenizer.builtin_tokenizer().backend.to_str())

  def _broken(self, damage):
    import shutil  # pylint: disable=g-import-not-at-top
    path = os.path.join(tempfile.mkdtemp(), "ckpt")
    shutil.copytree(self.good, path)
    damage(path)
    return path

  def test_each_broken_directory_is_one_setup_error(self):
    self.assertIsNotNone(loading.load_model(_hf_config(self.good)).params)

    def edit_config(path, **fields):
      with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
      cfg.update(fields)
      with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)

    def first_shard(path):
      return os.path.join(path, sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[0])

    cases = {
        "unsupported architecture": (
            lambda p: edit_config(p, model_type="llava", architectures=["LlavaForCausalLM"]),
            r"model_type 'llava'.*which evejax does not implement"),
        "damaged config.json": (
            lambda p: open(os.path.join(p, "config.json"), "w").write("{\"model_type\": "),
            "JSONDecodeError"),
        "missing shard": (lambda p: os.remove(first_shard(p)), r"listed in .* but missing"),
        "truncated shard": (lambda p: open(first_shard(p), "r+b").truncate(100),
                            "SafetensorError"),
        "no tokenizer": (lambda p: os.remove(os.path.join(p, "tokenizer.json")),
                         "No tokenizer.json"),
        "no config": (lambda p: os.remove(os.path.join(p, "config.json")), "has no config.json"),
    }
    for name, (damage, pattern) in cases.items():
      with self.subTest(name):
        path = self._broken(damage)
        with self.assertRaises(loading.SetupError) as caught:
          loading.load_model(_hf_config(path))
        self.assertRegex(str(caught.exception), pattern)
        self.assertIn(path, str(caught.exception))


if __name__ == "__main__":
  absltest.main()
