"""A full disk or an unwritable workdir: one clear error, nothing torn, nothing lost.

Each test writes onto a small tmpfs (tests/faults.py) filled to a chosen
free size, or remounted read-only: checkpoints (refused before writing, and
failing inside orbax), metrics JSONL, gallery pages and TensorBoard.
"""
import errno
import json
import os
import tempfile
import threading
from unittest import mock

os.environ["JAX_PLATFORMS"] = "cpu"

import pytest  # noqa: E402
from absl.testing import absltest  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from evejax import checkpoint  # noqa: E402
from evejax import observe  # noqa: E402
from evejax import storage  # noqa: E402

import faults  # noqa: E402

MiB = 1 << 20


def _state(seed):
  # Random floats: orbax compresses, so a constant array would take no room.
  return {"w": jnp.asarray(np.random.default_rng(seed).normal(size=(MiB // 4,)), jnp.float32)}


class CheckpointOnAFullDiskTest(absltest.TestCase):

  def _first_save(self):
    root = faults.tmpfs(self, 8 * 1024)
    ckpt = checkpoint.Checkpointer(os.path.join(root, "ckpt"), save_every=1, keep=3)
    self.addCleanup(ckpt.close)
    self.assertTrue(ckpt.maybe_save(1, _state(1), {"pos": 1}))
    ckpt.wait()
    faults.fill(root, MiB // 2)
    return root, ckpt

  def _assert_step_1_restores(self, ckpt):
    step, state, extra = ckpt.restore_latest({"w": jnp.zeros((MiB // 4,), jnp.float32)})
    self.assertEqual((step, extra), (1, {"pos": 1}))
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(1)["w"]))

  def test_a_save_that_cannot_fit_is_refused_before_writing(self):
    root, ckpt = self._first_save()
    with self.assertRaises(storage.StorageError) as caught:
      ckpt.maybe_save(2, _state(2), {"pos": 2})
    message = str(caught.exception)
    self.assertIn(os.path.join(root, "ckpt"), message)
    self.assertRegex(message, r"the file system is full \(needs about \d+\.\d KiB, 512\.0 KiB free\)")
    self.assertIn("step 1) is intact", message)
    self.assertEqual(os.listdir(os.path.join(root, "ckpt")), ["1"])   # nothing half-written
    self._assert_step_1_restores(ckpt)
    ckpt.close()   # quiet: the failure was reported once

  def test_a_save_that_fails_inside_orbax_is_one_error(self):
    root, ckpt = self._first_save()
    # As if the estimate had passed: orbax's own write then fails mid-save.
    with mock.patch.object(storage, "check_free"):
      with self.assertRaises(storage.StorageError) as caught:
        ckpt.maybe_save(2, _state(2), {"pos": 2})
        ckpt.wait()
    self.assertIn("the file system is full", str(caught.exception))
    self.assertIn("step 1) is intact", str(caught.exception))
    self.assertEqual(ckpt.committed_steps(), [1])
    self._assert_step_1_restores(ckpt)

  def test_a_read_only_directory(self):
    root = faults.tmpfs(self, 4096)
    os.makedirs(os.path.join(root, "ckpt"))
    faults.remount_read_only(root)
    with self.assertRaisesRegex(storage.StorageError, "read-only.*make it writable"):
      ckpt = checkpoint.Checkpointer(os.path.join(root, "ckpt"), save_every=1, keep=1)
      ckpt.maybe_save(1, _state(1), {})
      ckpt.wait()


class MetricsOnAFullDiskTest(absltest.TestCase):

  def test_no_torn_record_and_one_error_naming_the_file(self):
    root = faults.tmpfs(self, 1024)
    writer = observe.MetricsWriter(root, tensorboard=False)
    writer.scalars(1, {"loss": 1.0})
    faults.fill(root, 0)
    path = os.path.join(root, observe.METRICS_FILE)
    with self.assertRaises(storage.StorageError) as caught:
      for step in range(2, 200):   # each record larger than a page: a write fills it midway
        writer.scalars(step, {f"metric_{i}": float(i) for i in range(400)})
    self.assertIn(path, str(caught.exception))
    self.assertIn("the file system is full", str(caught.exception))
    with open(path, "rb") as f:
      data = f.read()
    self.assertTrue(data.endswith(b"\n"))
    self.assertEqual([json.loads(x)["step"] for x in data.splitlines()][0], 1)
    writer.close()

  def test_a_torn_tail_left_by_a_killed_writer_is_cut_on_open(self):
    workdir = tempfile.mkdtemp()
    path = os.path.join(workdir, observe.METRICS_FILE)
    with open(path, "w") as f:
      f.write(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "lo')
    with observe.MetricsWriter(workdir, tensorboard=False) as w:
      w.scalars(3, {"loss": 3.0})
    self.assertEqual([r["step"] for r in observe.read_jsonl(path)], [1, 3])
    with open(path) as f:
      self.assertLen(f.read().splitlines(), 2)

  @pytest.mark.slow   # about 6 s
  def test_tensorboard_refused_on_a_full_disk_and_after_its_thread_died(self):
    root = faults.tmpfs(self, 1024)
    writer = observe.MetricsWriter(root)
    writer.scalars(1, {"loss": 1.0})
    filler = faults.fill(root, 8192)
    with self.assertRaisesRegex(storage.StorageError, "TensorBoard events"):
      writer.scalars(2, {"loss": 2.0})
    os.remove(filler)
    # A write that failed in tensorboardX's thread kills it; the next record
    # would block forever on its full queue, and is refused instead.
    event_writer = writer._tb.file_writer.event_writer   # pylint: disable=protected-access
    with mock.patch.object(event_writer._ev_writer, "write_event",   # pylint: disable=protected-access
                           side_effect=OSError(errno.ENOSPC, "No space left on device")), \
         mock.patch.object(threading, "excepthook"):
      writer.scalars(3, {"loss": 3.0})
      event_writer._worker.join(timeout=10)   # pylint: disable=protected-access
    with self.assertRaisesRegex(storage.StorageError, "writer thread stopped"):
      for step in range(4, 100):
        writer.scalars(step, {"loss": 1.0})


class PagesOnAFullDiskTest(absltest.TestCase):

  def test_the_gallery_page_stays_whole(self):
    root = faults.tmpfs(self, 1024)
    gallery = observe.Gallery(title="g")
    gallery.add({"title": "first"})
    path = os.path.join(root, "gallery", "iter1.html")
    gallery.write(path)
    before = open(path).read()
    faults.fill(root, 0)
    gallery.add({"title": "second", "program": "x = 1\n" * 4000})
    with self.assertRaisesRegex(storage.StorageError, r"the gallery page to .*iter1\.html"):
      gallery.write(path)
    self.assertEqual(open(path).read(), before)
    self.assertEqual(os.listdir(os.path.dirname(path)), ["iter1.html"])   # no .tmp left

  def test_errors_that_are_not_about_storage_pass_through(self):
    self.assertIsNone(storage.from_error(ValueError("shape mismatch"), "/x", "y"))
    orbax_like = ValueError("RESOURCE_EXHAUSTED: ... Disk quota exceeded [os_error_code='122']")
    self.assertIn("the disk quota is exceeded", str(storage.from_error(orbax_like, "/x", "y")))


if __name__ == "__main__":
  absltest.main()
