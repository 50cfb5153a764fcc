"""Tests for source images (evejax.data.sources)."""
import json
import os
import pathlib
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import numpy as np
from PIL import Image

from evejax.data import sources


def _ids(items):
  return [key for key, _ in items]


def _write(path: pathlib.Path, color, size=(40, 30), mode="RGB") -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, color).save(path)
  return path


class BuiltinTest(absltest.TestCase):

  def test_scenes_are_deterministic_per_seed_and_index(self):
    a = sources.builtin_images(3, size=(112, 96), seed=5)
    b = sources.builtin_images(6, size=(112, 96), seed=5, shuffle=False)
    c = sources.builtin_images(3, size=(112, 96), seed=6)
    for i in range(3):
      ka, ia = a.item(i)
      kb, ib = b.item(i)
      self.assertEqual(ka, kb)
      self.assertEqual(ia.size, (112, 96))
      self.assertEqual(ia.mode, "RGB")
      np.testing.assert_array_equal(np.asarray(ia), np.asarray(ib))
      self.assertFalse(np.array_equal(np.asarray(ia), np.asarray(c.item(i)[1])))
    self.assertFalse(np.array_equal(np.asarray(a.item(0)[1]), np.asarray(a.item(1)[1])))

  def test_scenes_are_colourful_busy_and_not_dark(self):
    for key, image in sources.builtin_images(6, seed=0).take(6):
      a = np.asarray(image, np.float32)
      luma = 0.2126 * a[..., 0] + 0.7152 * a[..., 1] + 0.0722 * a[..., 2]
      with self.subTest(key):
        self.assertLess((luma <= 5).mean(), 0.02)
        self.assertGreater(luma.std(), 15)  # shapes stand out from the background
        # Many distinct colours (shapes + gradient), not a flat picture.
        self.assertGreater(len(np.unique(a.reshape(-1, 3), axis=0)), 200)
        # Every quadrant has structure, so regional edits are visible anywhere.
        h, w = luma.shape
        for qy in (0, 1):
          for qx in (0, 1):
            quad = luma[qy * h // 2:(qy + 1) * h // 2, qx * w // 2:(qx + 1) * w // 2]
            self.assertGreater(np.abs(np.diff(quad, axis=1)).mean(), 0.5)

  def test_bundled_photos_when_installed(self):
    photos = sources.bundled_photos()
    if not photos:
      self.skipTest("no matplotlib/scikit-image sample photos installed")
    src = sources.builtin_images(1, size=(112, 112), seed=0, photos=True, shuffle=False)
    self.assertLen(src, 1 + len(photos))
    key, image = src.item(1)
    self.assertTrue(key.startswith("photo:"))
    self.assertEqual((image.size, image.mode), ((112, 112), "RGB"))

  def test_empty_builtin_is_an_error(self):
    with self.assertRaisesRegex(ValueError, "n > 0"):
      sources.builtin_images(0)


class OrderAndResumeTest(absltest.TestCase):

  def test_epochs_are_permutations_shuffled_by_seed(self):
    src = sources.builtin_images(8, size=(32, 32), seed=1)
    epochs = [_ids(src.take(8)) for _ in range(3)]
    natural = [f"builtin:1:{i}" for i in range(8)]
    for e in epochs:
      self.assertCountEqual(e, natural)
    self.assertNotEqual(epochs[0], epochs[1])
    self.assertNotEqual(epochs[0], natural)
    again = sources.builtin_images(8, size=(32, 32), seed=1)
    self.assertEqual(_ids(again.take(16)), epochs[0] + epochs[1])
    other = sources.builtin_images(8, size=(32, 32), seed=2)
    self.assertNotEqual([k.split(":")[2] for k in _ids(other.take(8))],
                        [k.split(":")[2] for k in epochs[0]])
    plain = sources.builtin_images(8, size=(32, 32), seed=1, shuffle=False)
    self.assertEqual(_ids(plain.take(8)), natural)

  def test_state_restore_resumes_exactly(self):
    src = sources.builtin_images(5, size=(32, 32), seed=3)
    src.take(7)  # into the second epoch
    state = src.state()
    self.assertEqual(state, {"position": 7})
    expected = src.take(6)
    resumed = sources.builtin_images(5, size=(32, 32), seed=3)
    resumed.restore(json.loads(json.dumps(state)))
    got = resumed.take(6)
    self.assertEqual(_ids(got), _ids(expected))
    for (_, a), (_, b) in zip(got, expected):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class FileSourcesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = pathlib.Path(tempfile.mkdtemp())

  def test_folder_lists_images_recursively(self):
    _write(self.root / "b.png", "red")
    _write(self.root / "sub" / "a.jpg", "blue")
    (self.root / "notes.txt").write_text("not an image")
    src = sources.folder_images(self.root, shuffle=False)
    self.assertEqual(_ids(src.take(2)), ["b.png", "sub/a.jpg"])
    self.assertEqual(src.item(0)[1].getpixel((0, 0)), (255, 0, 0))

  def test_folder_errors(self):
    with self.assertRaisesRegex(ValueError, "does not exist"):
      sources.folder_images(self.root / "missing")
    with self.assertRaisesRegex(ValueError, "holds no files"):
      sources.folder_images(self.root)

  def test_unreadable_image_names_the_file(self):
    (self.root / "broken.png").write_bytes(b"\x89PNG not really")
    src = sources.folder_images(self.root)
    with self.assertRaisesRegex(sources.SourceError, "None of the 1 images.*broken.png"):
      next(src)

  def test_decode_guard_refuses_before_decoding(self):
    _write(self.root / "big.png", "green", size=(200, 100))
    src = sources.folder_images(self.root, max_decode_pixels=10_000)
    with self.assertRaisesRegex(sources.SourceError, r"big\.png.*max_decode_pixels"):
      next(src)
    ok = sources.folder_images(self.root, max_decode_pixels=20_000)
    self.assertEqual(next(ok)[1].size, (200, 100))

  def test_pixel_range_rescales_keeping_aspect(self):
    _write(self.root / "big.png", "green", size=(200, 100))
    _write(self.root / "small.png", "green", size=(20, 10))
    src = sources.folder_images(self.root, max_pixels=5_000, min_pixels=800, shuffle=False)
    for _, image in src.take(2):
      self.assertBetween(image.width * image.height, 800, 5_000)
      self.assertAlmostEqual(image.width / image.height, 2.0, delta=0.1)

  def test_transparent_pixels_become_white(self):
    _write(self.root / "clear.png", (0, 0, 0, 0), mode="RGBA")
    image = sources.folder_images(self.root).item(0)[1]
    self.assertEqual(image.mode, "RGB")
    self.assertEqual(image.getpixel((3, 3)), (255, 255, 255))

  def test_jsonl_paths_relative_to_the_file_and_ids(self):
    _write(self.root / "imgs" / "x.png", "red")
    _write(self.root / "imgs" / "y.png", "blue")
    lst = self.root / "lists" / "train.jsonl"
    lst.parent.mkdir()
    lst.write_text(json.dumps({"image": "../imgs/x.png", "id": 7}) + "\n\n"
                   + json.dumps({"image": str(self.root / "imgs" / "y.png"), "q": 1}) + "\n")
    src = sources.jsonl_images(lst, shuffle=False)
    (k0, i0), (k1, i1) = src.take(2)
    self.assertEqual(k0, "7")
    self.assertEqual(k1, str(self.root / "imgs" / "y.png"))
    self.assertEqual((i0.getpixel((0, 0)), i1.getpixel((0, 0))), ((255, 0, 0), (0, 0, 255)))

  def test_jsonl_errors_name_the_line(self):
    lst = self.root / "bad.jsonl"
    lst.write_text('{"image": "a.png"}\n{oops\n')
    with self.assertLogs(level="WARNING") as logs:
      self.assertEqual(sources.jsonl_images(lst).skipped, {"bad_manifest_line": 1})
    self.assertIn("bad.jsonl:2", logs.output[0])
    lst.write_text('{"path": "a.png"}\n')
    with self.assertRaisesRegex(sources.SourceError, r"bad\.jsonl:1.*'image'"):
      sources.jsonl_images(lst)
    lst.write_text('{"image": "missing.png"}\n')
    with self.assertRaisesRegex(sources.SourceError, "missing.png"):
      next(sources.jsonl_images(lst))


class MakeSourceTest(absltest.TestCase):

  def test_kinds_and_config_errors(self):
    root = pathlib.Path(tempfile.mkdtemp())
    _write(root / "a.png", "red")
    (root / "l.jsonl").write_text('{"image": "a.png"}\n')
    import ml_collections
    cfg = ml_collections.ConfigDict({"kind": "builtin", "n": 2, "size": (48, 40), "seed": 4})
    src = sources.make_source(cfg)
    self.assertIsInstance(src, sources.BuiltinSource)
    self.assertEqual(src.item(0)[1].size, (48, 40))
    self.assertLen(sources.make_source({"kind": "folder", "path": str(root)}), 1)
    self.assertLen(sources.make_source({"kind": "jsonl", "path": str(root / "l.jsonl")}), 1)
    with self.assertRaisesRegex(ValueError, "kind 'web' is unknown"):
      sources.make_source({"kind": "web"})
    with self.assertRaisesRegex(ValueError, r"unknown keys \['colour'\]"):
      sources.make_source({"kind": "builtin", "n": 2, "colour": 1})
    with self.assertRaisesRegex(ValueError, "needs a path"):
      sources.make_source({"kind": "folder", "path": ""})

  def test_one_config_block_serves_every_kind(self):
    # The shape of configs/eve.py's `data` block: keys of all kinds together.
    root = pathlib.Path(tempfile.mkdtemp())
    _write(root / "a.png", "red", size=(300, 200))
    block = {"kind": "builtin", "path": "", "name": "", "split": "train", "data_dir": "",
             "size": 112, "num_images": 3, "min_pixels": 56 * 56, "max_pixels": 112 * 112}
    src = sources.make_source(block)
    self.assertLen(src, 3)
    self.assertEqual(src.item(0)[1].size, (112, 112))
    image = sources.make_source({**block, "kind": "folder", "path": str(root)}).item(0)[1]
    self.assertLessEqual(image.width * image.height, 112 * 112)
    self.assertAlmostEqual(image.width / image.height, 1.5, delta=0.05)

  def test_tfds_reads_a_locally_built_array_record_dataset(self):
    try:
      import array_record  # noqa: F401
      import tensorflow_datasets as tfds
    except ImportError:
      self.skipTest("tensorflow_datasets / array_record not installed")
    import io
    tfds.disable_progress_bar()

    class EvejaxTinyColors(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"picture": tfds.features.Image(shape=(None, None, 3))}))

      def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

      def _generate_examples(self):
        for i in range(3):
          # Encoded bytes: encoding arrays would need TensorFlow.
          buf = io.BytesIO()
          Image.new("RGB", (30, 20), (80 * i, 10, 200)).save(buf, format="PNG")
          buf.seek(0)
          yield i, {"picture": buf}

    data_dir = tempfile.mkdtemp()
    EvejaxTinyColors(data_dir=data_dir, file_format="array_record").download_and_prepare()
    cfg = {"kind": "tfds", "name": "evejax_tiny_colors", "split": "train",
           "data_dir": data_dir, "image_key": "picture", "shuffle": False}
    src = sources.make_source(cfg)
    self.assertLen(src, 3)
    key, image = src.item(2)
    self.assertEqual(key, "tfds:evejax_tiny_colors/train/2")
    self.assertEqual((image.size, image.getpixel((0, 0))), ((30, 20), (160, 10, 200)))
    with self.assertRaisesRegex(ValueError, "no feature 'image'"):
      sources.make_source({**cfg, "image_key": "image"}).item(0)
    with self.assertRaisesRegex(ValueError, "Cannot open TFDS dataset 'no_such_set_xyz'"):
      sources.make_source({**cfg, "name": "no_such_set_xyz"})

  def test_tfds_missing_dependency_is_a_clear_error(self):
    try:
      import tensorflow_datasets  # noqa: F401
      self.skipTest("tensorflow_datasets is installed")
    except ImportError:
      pass
    with self.assertRaisesRegex(sources.SourceError, "pip install tensorflow-datasets"):
      sources.make_source({"kind": "tfds", "name": "mnist"})


if __name__ == "__main__":
  absltest.main()
