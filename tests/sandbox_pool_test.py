"""The pool end to end: contracts, ordering, back-pressure, checks, the CLI.

Expected images are computed here directly with PIL on fresh copies of the
source, independently of the sandbox, and compared pixel for pixel.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import ml_collections
import numpy as np
from PIL import Image, ImageDraw
import psutil

from evejax.sandbox import CheckConfig, EveJob, PlotJob, SandboxConfig
from evejax.sandbox import SandboxPool, SvgJob
from evejax.sandbox.pool import SandboxUnavailable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BOXES = """from PIL import ImageDraw


def edit_image(img, x, color=(255, 0, 0)):
    # draws on its argument in place, as published seed programs do
    ImageDraw.Draw(img).rectangle([x, 4, x + 20, 30], fill=color)
    print("drew", x)
    return img


args_list = [{"x": 2}, {"x": 24}, {"x": 46, "color": (0, 0, 255)}, {"x": 68}]
"""
BOX_ARGS = [{"x": 2}, {"x": 24}, {"x": 46, "color": (0, 0, 255)}, {"x": 68}]


def source_image(h=80, w=112):
  yy, xx = np.mgrid[0:h, 0:w]
  return np.stack([xx * 2, yy * 3, (xx + yy)], -1).astype(np.uint8) + 40


def expected_boxes(src):
  out = []
  for a in BOX_ARGS:
    im = Image.fromarray(src)
    ImageDraw.Draw(im).rectangle([a["x"], 4, a["x"] + 20, 30],
                                 fill=a.get("color", (255, 0, 0)))
    out.append(np.asarray(im))
  return out


def colored(index, delay=0.0):
  """A valid program whose outputs encode `index`; sleeps `delay` first."""
  return f"""import time
from PIL import Image


def edit_image(img, k):
    time.sleep({delay})
    return Image.new("RGB", (70 + 10 * k, 70), ({index}, 40 * k, 200))


args_list = [{{"k": 0}}, {{"k": 1}}, {{"k": 2}}, {{"k": 3}}]
"""


TAMPER_INPUT = """import ctypes
import mmap
import os
from PIL import ImageDraw


def mprotect_write(fd):
    # Map it read-only, then ask for write access to that shared mapping.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                          ctypes.c_int, ctypes.c_int, ctypes.c_long]
    address = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if libc.mprotect(ctypes.c_void_p(address), 4096,
                     mmap.PROT_READ | mmap.PROT_WRITE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect")
    ctypes.memset(address, 0, 64)


def tamper():
    # The input pixels arrive as a memfd; every way of writing must fail.
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink("/proc/self/fd/" + name)
        except OSError:  # the descriptor of the listing itself
            continue
        if "evejax-input" not in link:
            continue
        fd = int(name)
        print("input", link)
        attempts = {
            "write": lambda: os.pwrite(fd, b"\\0" * 64, 0),
            "truncate": lambda: os.ftruncate(fd, 0),
            "grow": lambda: os.ftruncate(fd, 1 << 20),
            "map_shared_write": lambda: mmap.mmap(fd, 64, mmap.MAP_SHARED,
                                                  mmap.PROT_WRITE),
            "mprotect_write": lambda: mprotect_write(fd),
            "reopen_write": lambda: os.pwrite(
                os.open("/proc/self/fd/" + name, os.O_RDWR), b"\\0", 0),
        }
        for what, attempt in attempts.items():
            try:
                attempt()
                print("ALLOWED", what)
            except OSError as e:
                print("refused", what, e.errno)


def edit_image(img, x):
    if x == 2:
        tamper()
    ImageDraw.Draw(img).rectangle([x, 4, x + 20, 30], fill=(255, 0, 0))
    return img


args_list = [{"x": 2}, {"x": 24}, {"x": 46}, {"x": 68}]
"""


KILL_OTHERS = """import os
import time
from PIL import ImageDraw


def others():
    me = os.getpid()
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != me]


def kill_others():
    # The next job's spare is forked just after this job starts and runs as
    # another uid, so this job must not be able to signal it (nor anything).
    # Wait for it to appear: on a busy machine the fork can come later.
    deadline = time.monotonic() + 10
    while len(others()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in others():
        try:
            os.kill(pid, 9)
            print("KILLED", pid)
        except OSError as e:
            print("refused", pid, e.errno)


def edit_image(img, x):
    if x == 2:
        kill_others()
    ImageDraw.Draw(img).rectangle([x, 4, x + 20, 30], fill=(255, 0, 0))
    return img


args_list = [{"x": 2}, {"x": 24}, {"x": 46}, {"x": 68}]
"""


class PoolTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.pool = SandboxPool(SandboxConfig(workers=2, timeout_s=10))
    cls.src = source_image()

  @classmethod
  def tearDownClass(cls):
    cls.pool.close()
    super().tearDownClass()

  def test_eve_outputs_match_direct_pil_on_fresh_copies(self):
    res = self.pool.map([EveJob(BOXES, self.src)])[0]
    self.assertTrue(res.ok, res.detail)
    self.assertEqual(res.reason, "ok")
    self.assertEqual(res.args, BOX_ARGS)
    for got, want in zip(res.images, expected_boxes(self.src)):
      np.testing.assert_array_equal(got, want)
    # Output 3 does not carry the boxes of calls 0-2 (a fresh copy per call).
    np.testing.assert_array_equal(res.images[3][10, 10], self.src[10, 10])
    self.assertEqual(res.stdout.split(), ["drew", "2", "drew", "24", "drew",
                                          "46", "drew", "68"])
    self.assertTrue(res.function_source.rstrip().endswith("return img"))
    self.assertGreater(res.wall_s, 0)

  def test_input_pixels_are_read_only(self):
    first, second = self.pool.map([EveJob(TAMPER_INPUT, self.src),
                                   EveJob(BOXES, self.src)])
    self.assertTrue(first.ok, first.detail + first.stderr)
    self.assertEqual(first.stdout.count("evejax-input"), 1)  # one mapping
    self.assertNotIn("ALLOWED", first.stdout)
    self.assertEqual(first.stdout.count("refused"), 6)
    np.testing.assert_array_equal(first.images[3][40, 100],
                                  self.src[40, 100])
    for got, want in zip(second.images, expected_boxes(self.src)):
      np.testing.assert_array_equal(got, want)

  def test_map_keeps_order_with_uneven_durations(self):
    jobs = [EveJob(colored(i, delay=0.15 if i % 3 == 0 else 0.0), self.src)
            for i in range(8)]
    results = self.pool.map(jobs)
    for i, res in enumerate(results):
      self.assertTrue(res.ok, res.detail)
      self.assertEqual(int(res.images[0][0, 0, 0]), i)
      self.assertEqual(res.images[3].shape, (70, 100, 3))

  def test_futures(self):
    futs = self.pool.submit_batch([EveJob(colored(i), self.src) for i in range(3)])
    done, _ = concurrent.futures.wait(futs, timeout=60)
    self.assertLen(done, 3)
    self.assertTrue(all(f.result().ok for f in futs))

  def test_static_failures_resolve_immediately(self):
    bad = [EveJob("", self.src), EveJob("def f(:", self.src),
           EveJob("import random\n" + BOXES, self.src),
           EveJob(BOXES.replace('{"x": 68}', '{"x": 2}'), self.src)]
    futs = [self.pool.submit(j) for j in bad]
    self.assertTrue(all(f.done() for f in futs))
    self.assertEqual([f.result().reason for f in futs],
                     ["no_code", "syntax_error", "forbidden", "invalid_program"])

  def test_validity_checks(self):
    def program(body, extra=""):
      return (f"from PIL import Image\n{extra}\n\ndef edit_image(img, k):\n"
              f"{body}\n\nargs_list = [{{'k': 0}}, {{'k': 1}}, {{'k': 2}}, "
              "{'k': 3}]\n")
    black = program("    return Image.new('RGB', (90 + k, 90))")
    clear = program("    return Image.new('RGBA', (90 + k, 90), (255, 0, 0, 0))")
    same = program("    return img.copy()")
    tiny = program("    return img.resize((10 + k, 10))")
    # 20-44% black: invalid, unless the program rotates (75% allowed).
    half = ("    im = Image.new('RGB', (100, 100), (150, 200, 90))\n"
            "    im.paste((0, 0, 0), (0, 0, 100, 20 + 8 * k))\n    return im")
    rotating = program(half, extra="ROTATE = '.rotate('")
    results = self.pool.map([EveJob(p, self.src) for p in
                             (black, clear, same, tiny, program(half),
                              rotating)])
    reasons = [(r.reason, r.detail) for r in results]
    self.assertEqual(reasons[0][0], "invalid_output")
    self.assertIn("near-black", reasons[0][1])
    self.assertIn("opaque", reasons[1][1])
    self.assertIn("near-identical", reasons[2][1])
    self.assertIn("fewer than min_pixels", reasons[3][1])
    self.assertIn("near-black", reasons[4][1])
    self.assertEqual(reasons[5][0], "ok", reasons[5][1])
    self.assertLen(results[2].images, 4)  # invalid outputs are still shown

  def test_exception_detail_points_at_the_program(self):
    src = ("def edit_image(img, k):\n    if k == 2:\n"
           "        raise ValueError('bad k %d' % k)\n    return img\n\n"
           "args_list = [{'k': 0}, {'k': 1}, {'k': 2}, {'k': 3}]\n")
    res = self.pool.map([EveJob(src, self.src)])[0]
    self.assertEqual(res.reason, "exception")
    self.assertIn("args_list[2]", res.detail)
    self.assertIn('File "<program>", line 3', res.detail)
    self.assertIn("ValueError: bad k 2", res.detail)
    self.assertNotIn("harness.py", res.detail)

  def test_svg_render(self):
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50">'
           '<rect x="0" y="0" width="40" height="50" fill="#ff0000"/></svg>')
    big = ('<svg xmlns="http://www.w3.org/2000/svg" width="4000" '
           'height="4000"><circle cx="2000" cy="2000" r="900"/></svg>')
    res, scaled = self.pool.map([SvgJob(svg), SvgJob(big)])
    self.assertTrue(res.ok, res.detail)
    self.assertEqual(res.images[0].shape, (50, 100, 3))
    np.testing.assert_array_equal(res.images[0][25, 10], [255, 0, 0])
    np.testing.assert_array_equal(res.images[0][25, 90], [255, 255, 255])
    self.assertTrue(scaled.ok, scaled.detail)
    self.assertEqual(scaled.images[0].shape, (2000, 2000, 3))  # 4M pixels max

  def test_plot_contract(self):
    draw = ("from PIL import Image, ImageDraw\n\ndef draw():\n"
            "    im = Image.new('RGB', (64, 48), 'white')\n"
            "    ImageDraw.Draw(im).line([0, 0, 63, 47], fill='black')\n"
            "    return im\n")
    array = ("import numpy as np\nimage = np.zeros((30, 40, 3), np.uint8)\n"
             "image[:, :20] = 255\n")
    saved = ("from PIL import Image\n"
             "Image.new('RGB', (20, 10), (0, 255, 0)).save('plot.png')\n")
    results = self.pool.map([PlotJob(draw), PlotJob(array), PlotJob(saved)])
    for r in results:
      self.assertTrue(r.ok, r.detail)
    want = Image.new("RGB", (64, 48), "white")
    ImageDraw.Draw(want).line([0, 0, 63, 47], fill="black")
    np.testing.assert_array_equal(results[0].images[0], np.asarray(want))
    self.assertEqual(results[1].images[0][0, 0].tolist(), [255, 255, 255])
    self.assertEqual(results[1].images[0][0, 39].tolist(), [0, 0, 0])
    self.assertEqual(results[2].images[0][5, 5].tolist(), [0, 255, 0])

  def test_bad_input_image_is_a_caller_error(self):
    with self.assertRaisesRegex(ValueError, "EveJob.image"):
      self.pool.submit(EveJob(BOXES, b"definitely not an image"))
    with self.assertRaises(TypeError):
      self.pool.submit("not a job")


class PoolLifecycleTest(absltest.TestCase):

  def test_queue_is_bounded(self):
    with SandboxPool(SandboxConfig(workers=1, queue_size=1)) as pool:
      src = source_image()
      slow = EveJob(colored(1, delay=0.3), src)  # >= 1.2 s per job
      t0 = time.monotonic()
      futs = [pool.submit(slow), pool.submit(slow)]
      quick = time.monotonic() - t0
      futs.append(pool.submit(slow))  # waits for a free place in the queue
      blocked = time.monotonic() - t0 - quick
      self.assertLess(quick, 0.5)
      self.assertGreater(blocked, 0.8)
      self.assertTrue(all(f.result().ok for f in futs))

  def test_close_is_idempotent_and_final(self):
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    pool = SandboxPool(SandboxConfig(workers=1))
    tmp = pool.stats()[0]["host_tmp"]
    pool.close()
    pool.close()
    with self.assertRaisesRegex(RuntimeError, "closed"):
      pool.submit(EveJob(BOXES, source_image()))
    self.assertEqual({p.pid for p in me.children(recursive=True)}, before)
    self.assertFalse(os.path.exists(tmp))

  def test_dead_worker_is_replaced_and_its_job_retried(self):
    with SandboxPool(SandboxConfig(workers=1, grace_s=2.0)) as pool:
      src = source_image()
      launcher = psutil.Process(pool.stats()[0]["launcher_pid"])
      slow = pool.submit(EveJob(colored(1, delay=2.0), src))
      time.sleep(1.0)  # the job is running
      launcher.children()[0].kill()  # the zygote
      res = slow.result(timeout=60)
      self.assertTrue(res.ok, res.detail)   # run again on the new worker
      self.assertEqual(res.stats["worker_deaths"], 1)
      self.assertTrue(pool.map([EveJob(colored(2), src)])[0].ok)
      self.assertEqual(pool.stats()[0]["restarts"], 1)
      self.assertEqual(pool.worker_deaths, 1)

  def test_a_job_cannot_touch_the_next_spare(self):
    with SandboxPool(SandboxConfig(workers=1)) as pool:
      if not pool.layers.uid_drop:
        self.skipTest("needs the uid layer (two job uids per worker)")
      src = source_image()
      killer, after = pool.map([EveJob(KILL_OTHERS, src), EveJob(BOXES, src)])
      self.assertTrue(killer.ok, killer.detail + killer.stderr)
      self.assertNotIn("KILLED", killer.stdout)
      # It saw the zygote and the spare for the next job, and hit neither.
      self.assertGreaterEqual(killer.stdout.count("refused"), 2)
      self.assertTrue(after.ok, after.detail + after.stderr)
      self.assertEqual(pool.stats()[0]["restarts"], 0)

  def test_close_can_cancel_pending_jobs(self):
    pool = SandboxPool(SandboxConfig(workers=1, queue_size=8))
    src = source_image()
    futs = [pool.submit(EveJob(colored(i, delay=0.2), src)) for i in range(4)]
    time.sleep(0.3)
    pool.close(cancel_pending=True)
    self.assertTrue(futs[0].result().ok)
    self.assertTrue(any(f.cancelled() for f in futs[1:]))

  def test_required_layer_missing_refuses_to_start(self):
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with self.assertRaisesRegex(SandboxUnavailable, "seccomp"):
      SandboxPool(SandboxConfig(workers=1, seccomp=False,
                                require=("seccomp",)))
    self.assertEqual({p.pid for p in me.children(recursive=True)}, before)
    with self.assertRaisesRegex(ValueError, "unknown layers"):
      SandboxConfig(require=("firewall",))

  def test_config_from_configdict(self):
    cfg = ml_collections.ConfigDict({
        "workers": 3, "timeout_s": 5.0, "require": ["seccomp"],
        "checks": {"max_pixels": 1000}})
    sc = SandboxConfig.from_config(cfg)
    self.assertEqual((sc.workers, sc.timeout_s, sc.require), (3, 5.0,
                                                              ("seccomp",)))
    self.assertEqual(sc.checks, CheckConfig(max_pixels=1000))
    with self.assertRaisesRegex(ValueError, "unknown keys.*worker"):
      SandboxConfig.from_config({"worker": 2})


class RunCommandTest(absltest.TestCase):

  def test_run_prints_json_and_writes_images(self):
    tmp_dir = tempfile.TemporaryDirectory()
    self.addCleanup(tmp_dir.cleanup)
    tmp = tmp_dir.name
    prog = os.path.join(tmp, "boxes.py")
    with open(prog, "w") as f:
      f.write(BOXES)
    img = os.path.join(tmp, "src.png")
    src = source_image()
    Image.fromarray(src).save(img)
    out = os.path.join(tmp, "out")
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "evejax.sandbox.run", prog, "--image", img,
         "--out", out], capture_output=True, text=True, env=env, timeout=120,
        check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    summary = json.loads(proc.stdout)
    self.assertEqual(summary["reason"], "ok")
    self.assertEqual(summary["images"], [[80, 112, 3]] * 4)
    self.assertLen(summary["written"], 4)
    for path, want in zip(summary["written"], expected_boxes(src)):
      np.testing.assert_array_equal(np.asarray(Image.open(path)), want)
    # A failing program: exit status 1 and a classified reason.
    with open(prog, "w") as f:
      f.write(BOXES.replace("return img", "return img.crop((0, 0, 5, 5))"))
    proc = subprocess.run(
        [sys.executable, "-m", "evejax.sandbox.run", prog, "--image", img,
         "--out", out], capture_output=True, text=True, env=env, timeout=120,
        check=False)
    self.assertEqual(proc.returncode, 1, proc.stderr)
    self.assertEqual(json.loads(proc.stdout)["reason"], "invalid_output")


if __name__ == "__main__":
  absltest.main()
