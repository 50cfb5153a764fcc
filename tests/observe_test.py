"""Tests for evejax.observe: metrics files, progress, timer, gallery, logging."""
import os

os.environ["JAX_PLATFORMS"] = "cpu"

import base64  # noqa: E402
import glob  # noqa: E402
import html.parser  # noqa: E402
import io  # noqa: E402
import logging as std_logging  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

from absl import logging  # noqa: E402
from absl.testing import absltest  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402

from evejax import observe  # noqa: E402


def _tempdir(test):
  d = tempfile.mkdtemp(prefix="evejax_observe_test_")
  test.addCleanup(shutil.rmtree, d, ignore_errors=True)
  return d


def _read_events(logdir):
  """All events of all TFRecord event files under logdir, in file order."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      pos += 12  # length + its crc
      events.append(event_pb2.Event.FromString(data[pos:pos + length]))
      pos += length + 4  # payload + its crc
  return events


class FakeClock:

  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


class MetricsWriterTest(absltest.TestCase):

  def test_scalars_go_to_jsonl_and_tensorboard(self):
    workdir = _tempdir(self)
    with observe.MetricsWriter(workdir) as w:
      w.scalars(1, {"loss": np.float32(0.5), "count": np.int64(3), "ok": True}, prefix="train")
      w.scalars(2, {"loss": 0.25}, prefix="train")
    records = observe.read_jsonl(os.path.join(workdir, observe.METRICS_FILE))
    self.assertEqual([r["step"] for r in records], [1, 2])
    self.assertEqual(records[0]["train/loss"], 0.5)
    self.assertEqual(records[0]["train/count"], 3)
    self.assertEqual(records[0]["train/ok"], 1)
    self.assertIn("time", records[0])
    scalars = [(e.step, v.tag, v.simple_value) for e in _read_events(os.path.join(workdir, "tb"))
               for v in e.summary.value]
    self.assertIn((1, "train/loss", 0.5), scalars)
    self.assertIn((2, "train/loss", 0.25), scalars)

  def test_non_scalar_metric_is_a_clear_error(self):
    with observe.MetricsWriter(_tempdir(self), tensorboard=False) as w:
      with self.assertRaisesRegex(ValueError, "'hist' must be a scalar"):
        w.scalars(1, {"hist": np.zeros(3)})

  def test_resume_truncates_later_steps_and_never_duplicates(self):
    workdir = _tempdir(self)
    with observe.MetricsWriter(workdir) as w:
      for s in range(1, 6):
        w.scalars(s, {"v": s})
        w.text(s, {"note": f"first run {s}"})
    # A writer killed mid-line leaves a torn record behind.
    with open(os.path.join(workdir, observe.METRICS_FILE), "a") as f:
      f.write('{"step": 6, "v"')
    with observe.MetricsWriter(workdir, resume_step=3) as w:
      for s in range(4, 7):
        w.scalars(s, {"v": 10 * s})
    records = observe.read_jsonl(os.path.join(workdir, observe.METRICS_FILE))
    self.assertEqual([(r["step"], r["v"]) for r in records],
                     [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50), (6, 60)])
    texts = observe.read_jsonl(os.path.join(workdir, observe.TEXT_FILE))
    self.assertEqual([r["step"] for r in texts], [1, 2, 3])
    # TensorBoard is told to hide the killed run's events from step 4 on.
    starts = [e.step for e in _read_events(os.path.join(workdir, "tb"))
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    self.assertIn(4, starts)

  def test_images_and_text(self):
    workdir = _tempdir(self)
    img = np.zeros((6, 5, 3), np.uint8)
    img[2, 3] = (255, 0, 0)
    with observe.MetricsWriter(workdir) as w:
      w.images(7, {"edit": img, "gray": np.ones((4, 4), np.float32)}, prefix="eve")
      w.text(7, {"program": "def edit_image(img): <b>"})
    events = _read_events(os.path.join(workdir, "tb"))
    images = {v.tag: v.image for e in events for v in e.summary.value if v.HasField("image")}
    self.assertEqual(sorted(images), ["eve/edit", "eve/gray"])
    decoded = np.asarray(Image.open(io.BytesIO(images["eve/edit"].encoded_image_string)))
    np.testing.assert_array_equal(decoded[..., :3], img)
    texts = observe.read_jsonl(os.path.join(workdir, observe.TEXT_FILE))
    self.assertEqual(texts[0]["program"], "def edit_image(img): <b>")
    with self.assertRaisesRegex(ValueError, "Image must be"):
      observe.to_uint8_image(np.zeros((2, 3, 7)))


class ProgressTest(absltest.TestCase):

  def test_starts_at_restored_position_and_logs_eta(self):
    clock = FakeClock()
    out = io.StringIO()
    bar = observe.progress(10, "train", initial=4, clock=clock, log_every_s=5.0,
                           force=True, file=out)
    seen = []
    with self.assertLogs(level="INFO") as logs:
      for step in bar:
        seen.append(step)
        clock.t += 2.0   # 2 s per step
    self.assertEqual(seen, [4, 5, 6, 7, 8, 9])
    self.assertIn("4/10", out.getvalue())    # the drawn bar starts at the restored step
    self.assertIn("10/10", out.getvalue())
    lines = [m for m in logs.output if "train:" in m]
    self.assertLen(lines, 2)                 # at 6 s and 12 s of a 12 s run
    self.assertIn("7/10 (70.0%)", lines[0])
    self.assertIn("ETA 00:06", lines[0])    # 3 steps left at 0.5 it/s

  def test_iterable_counts_initial_as_done_and_no_bar_without_tty(self):
    bar = observe.progress(["a", "b"], "eval", initial=3)
    self.assertEqual(bar.total, 5)
    self.assertTrue(bar._bar.disable)   # pytest's stderr is not a TTY
    self.assertEqual(list(bar), ["a", "b"])
    self.assertEqual(bar.n, 5)


class TimerTest(absltest.TestCase):

  def test_sections_accumulate_with_percentages(self):
    clock = FakeClock()
    timer = observe.Timer(clock=clock)
    for _ in range(2):
      with timer("sampling"):
        clock.t += 3.0
      with timer("sandbox"):
        clock.t += 1.0
    clock.t += 2.0   # unaccounted
    self.assertEqual(timer.summary(), {"sampling": 6.0, "sandbox": 2.0})
    self.assertEqual(timer.counts(), {"sampling": 2, "sandbox": 2})
    self.assertEqual(timer.fractions(), {"sampling": 0.6, "sandbox": 0.2})
    self.assertEqual(timer.line(), "wall 10.0s | sampling 6.00s 60% | sandbox 2.00s 20% | "
                                   "other 2.00s 20%")
    self.assertEqual(timer.reset(), {"sampling": 6.0, "sandbox": 2.0})
    self.assertEqual(timer.summary(), {})

  def test_exception_still_counts_and_threads_add_up(self):
    timer = observe.Timer()
    with self.assertRaises(KeyError):
      with timer("rewards"):
        raise KeyError("x")
    self.assertIn("rewards", timer.summary())

    def work():
      for _ in range(200):
        timer.add("sandbox", 0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    self.assertEqual(timer.summary()["sandbox"], 400.0)
    self.assertEqual(timer.counts()["sandbox"], 800)


class _Collect(html.parser.HTMLParser):

  def __init__(self):
    super().__init__()
    self.tags, self.imgs, self.pre, self._in_pre = [], [], [], False

  def handle_starttag(self, tag, attrs):
    self.tags.append(tag)
    if tag == "img":
      self.imgs.append(dict(attrs)["src"])
    self._in_pre = tag == "pre"

  def handle_endtag(self, tag):
    if tag == "pre":
      self._in_pre = False

  def handle_data(self, data):
    if self._in_pre:
      self.pre.append(data)


class GalleryTest(absltest.TestCase):

  def test_self_contained_html_with_embedded_images_and_escaped_code(self):
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    edited = Image.fromarray(255 - source)
    program = 'def edit_image(img, k):\n  return img  # </pre><script>alert("x")</script>'
    gallery = observe.Gallery(_tempdir(self))
    gallery.add({
        "title": "task 0 <b>",
        "images": {"source": source, "k=1": edited, "k=2": source.astype(np.float32) / 255},
        "question": "Which edit was applied?",
        "options": ["A. flip", "B. rotate"],
        "answer": "B",
        "solver_samples": ["<think>hmm</think> \\boxed{B}", "A"],
        "rewards": {"difficulty": 0.5, "format": 1},
        "program": program,
    })
    gallery.add({"images": [source], "note": "second"})
    path = gallery.write()
    self.assertEqual(os.path.basename(path), "gallery.html")
    text = open(path, encoding="utf-8").read()
    self.assertNotIn("<script>", text)
    self.assertNotIn("<b>", text)
    parser = _Collect()
    parser.feed(text)
    self.assertEqual(parser.tags.count("div"), 2 + 2)   # 2 cards, 2 strips
    self.assertLen(parser.imgs, 4)
    for src in parser.imgs:
      self.assertTrue(src.startswith("data:image/png;base64,"))
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(parser.imgs[0].split(",")[1]))))
    np.testing.assert_array_equal(first, source)
    second = np.asarray(Image.open(io.BytesIO(base64.b64decode(parser.imgs[1].split(",")[1]))))
    np.testing.assert_array_equal(second, 255 - source)
    self.assertIn(program, "".join(parser.pre))   # escaped in the file, intact when read
    self.assertIn("difficulty", text)
    self.assertIn("0.5", text)

  def test_large_images_are_downscaled_and_cards_capped(self):
    gallery = observe.Gallery(max_image_side=16, max_cards=1)
    gallery.add({"images": np.zeros((64, 32, 3), np.uint8)})
    gallery.add({"images": np.zeros((8, 8, 3), np.uint8)})
    self.assertLen(gallery, 1)
    parser = _Collect()
    parser.feed(gallery.html())
    img = Image.open(io.BytesIO(base64.b64decode(parser.imgs[0].split(",")[1])))
    self.assertEqual(img.size, (8, 16))
    with self.assertRaisesRegex(ValueError, "needs a path"):
      gallery.write()

  def test_cards_on_disk_survive_a_restart_in_key_order(self):
    cards = os.path.join(_tempdir(self), "iter1.cards")
    first = observe.Gallery(cards_dir=cards, max_cards=2)
    first.add({"title": "LATE card"}, key="step00002_row0000")
    first.add({"title": "EARLY card"}, key="step00001_row0003")
    # A new process (a resumed run) finds both cards and shows them by key.
    again = observe.Gallery(cards_dir=cards, max_cards=2)
    self.assertLen(again, 2)
    text = again.html()
    self.assertLess(text.index("EARLY card"), text.index("LATE card"))
    again.add({"title": "early, re-run"}, key="step00001_row0003")   # same key: replaced
    self.assertTrue(again.has_room("step00001_row0003"))
    self.assertFalse(again.has_room("step00003_row0000"))
    again.add({"title": "third"}, key="step00003_row0000")           # over max_cards
    self.assertLen(again, 2)
    self.assertIn("early, re-run", again.html())
    self.assertNotIn("third", again.html())
    with self.assertRaisesRegex(ValueError, "card key"):
      again.add({"title": "x"}, key="../escape")


class SetupLoggingTest(absltest.TestCase):

  def test_absl_logs_reach_the_workdir_file_once(self):
    workdir = _tempdir(self)
    path = observe.setup_logging(workdir)
    self.assertEqual(path, observe.setup_logging(workdir))   # idempotent
    self.addCleanup(self._remove_handler, path)
    logging.info("hello from the test %d", 42)
    logging.debug("not at INFO")
    for h in std_logging.getLogger().handlers:
      h.flush()
    lines = [ln for ln in open(path).read().splitlines() if "hello from the test 42" in ln]
    self.assertLen(lines, 1)
    self.assertNotIn("not at INFO", open(path).read())

  @staticmethod
  def _remove_handler(path):
    root = std_logging.getLogger()
    for h in list(root.handlers):
      if isinstance(h, std_logging.FileHandler) and h.baseFilename == path:
        root.removeHandler(h)
        h.close()


if __name__ == "__main__":
  absltest.main()
