"""Benchmark readers on files built here: VLMEvalKit TSV, HF datasets (arrow, parquet), JSONL."""
import base64
import csv
import io
import json
import os
import shutil
import tempfile

from absl.testing import absltest
from PIL import Image

from evejax.eval import readers


def png(colour, size=(40, 30)) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, colour).save(buf, format="PNG")
  return buf.getvalue()


def b64(data: bytes) -> str:
  return base64.b64encode(data).decode()


def _tempdir(test) -> str:
  d = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, d, ignore_errors=True)
  return d


def write_tsv(path, header, rows):
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(header)
    w.writerows(rows)


class TsvTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = _tempdir(self)
    red, blue = b64(png("red")), b64(png("blue"))
    header = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category",
              "l2-category"]
    rows = [
        ["0", red, "Which colour?", "", "red", "blue", "", "", "A", "colour", "coarse"],
        ["1", "0", "Same image, reused?", "Look closely.", "yes", "no", "nan", "nan", "A",
         "colour", "coarse"],
        ["2", str([red, blue]), "Two images: first?", "", "red", "blue", "green", "black", "A",
         "multi", "fine"],
        ["3", "", "No image here", "", "a", "b", "", "", "A", "colour", "coarse"],
        ["4", b64(b"not an image, but valid base64" * 4), "Broken image", "", "a", "b", "", "",
         "B", "c", "d"],
        ["5", "99", "Refers to a missing row", "", "a", "b", "", "", "A", "c", "d"],
        ["6", red, "Answer missing", "", "a", "b", "", "", "", "c", "d"],
        ["7", "abc" * 30, "Not base64 (bad padding)", "", "a", "b", "", "", "A", "c", "d"],
    ]
    self.path = os.path.join(self.dir, "MMStar.tsv")
    write_tsv(self.path, header, rows)

  def test_items_images_options_and_reasons(self):
    loaded = readers.read(self.path)
    self.assertEqual(loaded.format, "tsv")
    by_id = {it.id: it for it in loaded.items}
    self.assertEqual(sorted(by_id), ["0", "1", "2", "4"])
    first = by_id["0"]
    self.assertEqual(first.options, {"A": "red", "B": "blue"})   # empty C, D absent
    self.assertEqual((first.answer, first.category, first.subcategory), ("A", "colour", "coarse"))
    self.assertEqual(Image.open(io.BytesIO(first.images[0])).getpixel((0, 0)), (255, 0, 0))
    # Row 1 reuses row 0's image; "nan" options are absent; the hint is kept.
    self.assertEqual(by_id["1"].images, first.images)
    self.assertEqual(by_id["1"].options, {"A": "yes", "B": "no"})
    self.assertEqual(by_id["1"].hint, "Look closely.")
    self.assertLen(by_id["2"].images, 2)
    self.assertEqual(Image.open(io.BytesIO(by_id["2"].images[1])).getpixel((0, 0)), (0, 0, 255))
    reasons = {s.id: s.reason for s in loaded.skipped}
    self.assertEqual(reasons, {"3": "no_image", "5": "undecodable_image", "6": "missing_column",
                               "7": "undecodable_image"})
    # Bytes that decode as base64 but not as an image are found when prompting.
    self.assertEqual(by_id["4"].images[0][:6], b"not an")

  def test_locate_says_where_and_which_format(self):
    self.assertEqual(readers.locate(self.dir, ("MMStar",)), self.path)
    with self.assertRaisesRegex(readers.DataError, r"HallusionBench\.tsv.*VLMEvalKit TSV"):
      readers.locate(self.dir, ("HallusionBench",))
    with self.assertRaisesRegex(readers.DataError, "does not exist"):
      readers.locate(self.dir, ("MMStar",), os.path.join(self.dir, "nope.tsv"))


class HfDatasetsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    try:
      import datasets  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise absltest.SkipTest("HF `datasets` is not installed (pip install datasets): it "
                              "writes the saved datasets this test reads.") from None
    cls.tmp = tempfile.mkdtemp()
    features = datasets.Features({
        "id": datasets.Value("string"), "question": datasets.Value("string"),
        "options": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("string"), "image_1": datasets.Image(),
        "image_2": datasets.Image(), "subfield": datasets.Value("string")})
    rows = {
        "id": ["q0", "q1", "q2"],
        "question": ["How many legs?", "Which is bigger?", "Open question"],
        "options": [["2", "4", "6"], ["left", "right"], []],
        "answer": ["1", "0", "7"],    # lmms-lab/ai2d style: an index into the options
        "image_1": [Image.new("RGB", (30, 30), "red"), Image.new("RGB", (30, 30), "green"),
                    None],
        "image_2": [Image.new("RGB", (20, 20), "blue"), None, None],
        "subfield": ["bio", "geo", "bio"],
    }
    ds = datasets.Dataset.from_dict(rows, features=features)
    cls.saved = os.path.join(cls.tmp, "ai2d")
    datasets.DatasetDict({"test": ds}).save_to_disk(cls.saved)
    cls.parquet = os.path.join(cls.tmp, "AI2D.parquet")
    ds.to_parquet(cls.parquet)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def check(self, loaded):
    by_id = {it.id: it for it in loaded.items}
    self.assertEqual(sorted(by_id), ["q0", "q1"])
    self.assertEqual(by_id["q0"].options, {"A": "2", "B": "4", "C": "6"})
    self.assertEqual(by_id["q0"].answer, "B")        # index 1, not the option text "2"
    self.assertEqual(by_id["q1"].answer, "A")
    self.assertLen(by_id["q0"].images, 2)
    self.assertEqual(Image.open(io.BytesIO(by_id["q0"].images[1])).getpixel((0, 0)),
                     (0, 0, 255))
    self.assertEqual(by_id["q0"].category, "bio")
    self.assertEqual([(s.id, s.reason) for s in loaded.skipped], [("q2", "no_image")])

  def test_save_to_disk_dataset_dict(self):
    self.check(readers.read(self.saved, split="test", answer_index=True,
                            category_keys=("subfield",)))

  def test_parquet(self):
    self.check(readers.read(self.parquet, answer_index=True, category_keys=("subfield",)))

  def test_unknown_split_names_the_splits(self):
    with self.assertRaisesRegex(readers.DataError, r"splits \['test'\]"):
      readers.read(self.saved, split="validation")


class JsonlTest(absltest.TestCase):

  def test_records_image_paths_and_malformed_lines(self):
    d = _tempdir(self)
    os.makedirs(os.path.join(d, "images"))
    with open(os.path.join(d, "images", "a.png"), "wb") as f:
      f.write(png("white"))
    lines = [
        json.dumps({"id": "m1", "images": ["images/a.png"], "question": "Is it white?",
                    "answer": "Yes", "category": "colour", "set_id": 0, "figure_id": 1,
                    "question_id": 2}),
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"id": "m2", "image": "images/a.png", "question": "q", "answer": "3.5",
                    "question_type": "free_form", "answer_type": "float", "precision": 1.0,
                    "unit": "cm", "query": "Hint: ... q"}),
    ]
    path = os.path.join(d, "HallusionBench.jsonl")
    with open(path, "w") as f:
      f.write("\n".join(lines) + "\n")
    loaded = readers.read(path)
    by_id = {it.id: it for it in loaded.items}
    self.assertEqual(by_id["m1"].images, [os.path.join(d, "images", "a.png")])
    self.assertEqual(by_id["m1"].extra["figure_id"], 1)
    m2 = by_id["m2"]
    self.assertEqual((m2.answer_type, m2.precision, m2.unit), ("float", 1, "cm"))
    self.assertEqual(m2.extra["query"], "Hint: ... q")
    self.assertEqual([s.reason for s in loaded.skipped], ["malformed_row", "malformed_row"])


if __name__ == "__main__":
  absltest.main()
