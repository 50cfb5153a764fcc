"""Plotting programs in the jail: real matplotlib, every image format, and a
Python environment that lives under /tmp.

Expected images are drawn by the same program in this (unjailed) process and
compared pixel for pixel: the jail must change nothing about what a plot is.
"""

import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import matplotlib
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from evejax.sandbox import PlotJob, SandboxConfig, SandboxPool
from evejax.sandbox import harness

BAR = """import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(4, 3), dpi=50)
ax.bar(["a", "b", "c"], [3, 5, 2], color=["tab:red", "tab:green", "tab:blue"])
ax.set_title("Counts per class")
ax.set_ylabel("count")
"""

PIE = """import matplotlib.pyplot as plt
fig = plt.figure(figsize=(3, 3), dpi=60)
plt.pie([1, 2, 3], labels=["x", "y", "z"], autopct="%1.0f%%")
plt.title("Shares")
"""

LINE = """import matplotlib.pyplot as plt
import numpy as np

def draw():
    t = np.linspace(0, 6, 40)
    fig, ax = plt.subplots(figsize=(4, 2.5), dpi=50)
    ax.plot(t, np.sin(t), label="sin")
    ax.plot(t, np.cos(t), "--", label="cos")
    ax.text(1.0, 0.0, "$\\\\alpha = 2$")
    ax.legend(loc="upper right")
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
"""

SAVEFIG = """import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
ax.scatter([1, 2, 3], [3, 1, 2], s=80)
ax.grid(True)
fig.savefig("scatter.png")
plt.close(fig)
"""

# Largest mean absolute pixel error: lossless formats come back exactly.
FORMATS = {".png": 0, ".bmp": 0, ".gif": 0, ".tif": 0, ".tiff": 0,
           ".webp": 0, ".jpg": 4, ".jpeg": 4}

SAVE_AND_RELOAD = """from PIL import Image
import numpy as np
pixels = np.zeros((48, 64, 3), np.uint8)
pixels[:, :32] = (200, 30, 30)
pixels[:24, 32:] = (30, 30, 200)
im = Image.fromarray(pixels)
if "{suffix}" == ".gif":
    im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
im.save("picture{suffix}", **({{"lossless": True}} if "{suffix}" == ".webp" else {{}}))
with Image.open("picture{suffix}") as back:
    back.load()
    assert back.size == (64, 48), back.size
"""

EXPECTED = np.zeros((48, 64, 3), np.uint8)
EXPECTED[:, :32] = (200, 30, 30)
EXPECTED[:24, 32:] = (30, 30, 200)


def host_render(source: str) -> np.ndarray:
  """The program's image as the harness takes it, drawn outside the jail."""
  plt.close("all")
  frames = []
  cwd = os.getcwd()
  with tempfile.TemporaryDirectory() as scratch:
    os.chdir(scratch)
    try:
      harness.run({"kind": "plot", "source": source,
                   "max_render_pixels": 4_000_000}, b"",
                  lambda header, payload: frames.append((header, payload)),
                  hide=False)
    finally:
      os.chdir(cwd)
      plt.close("all")
  header, payload = frames[0]
  assert header["t"] == "image", header
  shape = (header["h"], header["w"], header["c"])
  return np.frombuffer(payload, np.uint8).reshape(shape)


class MatplotlibInTheJailTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.pool = SandboxPool(SandboxConfig(workers=2, timeout_s=30))

  @classmethod
  def tearDownClass(cls):
    cls.pool.close()
    super().tearDownClass()

  def test_matplotlib_programs_draw_as_they_do_outside(self):
    programs = {"bar (figure left open)": BAR, "pie (pyplot state)": PIE,
                "line with text and legend (draw())": LINE,
                "savefig to PNG": SAVEFIG}
    results = self.pool.map([PlotJob(p) for p in programs.values()])
    for (name, source), result in zip(programs.items(), results):
      with self.subTest(name):
        self.assertTrue(result.ok, f"{result.reason}: {result.detail}")
        want = host_render(source)
        got = result.images[0]
        self.assertEqual(got.shape, want.shape[:2] + (3,))
        np.testing.assert_array_equal(got, want[..., :3])
    self.assertEqual(results[0].images[0].shape, (150, 200, 3))

  def test_every_accepted_format_saves_and_reloads(self):
    suffixes = sorted(FORMATS)
    self.assertCountEqual(suffixes, harness._IMAGE_SUFFIXES)  # pylint: disable=protected-access
    results = self.pool.map(
        [PlotJob(SAVE_AND_RELOAD.format(suffix=s)) for s in suffixes])
    for suffix, result in zip(suffixes, results):
      with self.subTest(suffix):
        self.assertTrue(result.ok, f"{result.reason}: {result.detail}")
        diff = np.abs(result.images[0].astype(int) - EXPECTED)
        self.assertLessEqual(float(diff.mean()), FORMATS[suffix])


class EnvironmentUnderTmpTest(absltest.TestCase):
  """A Python environment below /tmp is seen whole from inside the jail.

  Laid out as CI's is: a venv (0755, as `python -m venv` makes it) inside a
  private temporary directory (0700, as `mktemp -d` makes it).
  """

  def setUp(self):
    super().setUp()
    scratch = tempfile.mkdtemp(prefix="evejax-scratch-", dir="/tmp")
    self.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
    site_packages = os.path.join(scratch, "venv", "lib", "site-packages")
    os.makedirs(os.path.join(site_packages, "probe_pkg"), mode=0o755)
    open(os.path.join(site_packages, "probe_pkg", "__init__.py"), "w").close()
    with open(os.path.join(site_packages, "probe_pkg", "lazy.py"), "w") as f:
      f.write("VALUE = 17\n")
    self.data = os.path.join(scratch, "data")
    os.mkdir(self.data, 0o755)
    Image.fromarray(EXPECTED).save(os.path.join(self.data, "source.png"))
    # The worker inherits this process's sys.path, as it does a venv's.
    sys.path.insert(0, site_packages)
    self.addCleanup(sys.path.remove, site_packages)

  def test_lazy_imports_and_files_below_tmp(self):
    lazy_import = ("import numpy as np\nimport probe_pkg.lazy\n"
                   "image = np.full((40, 60, 3), probe_pkg.lazy.VALUE, np.uint8)\n")
    read_file = (f"from PIL import Image\n"
                 f"image = Image.open({self.data + '/source.png'!r})\n")
    config = SandboxConfig(workers=1, ro_paths=(self.data,),
                           require=("private_root",))
    with SandboxPool(config) as pool:
      imported, read = pool.map([PlotJob(lazy_import), PlotJob(read_file)])
    self.assertTrue(imported.ok, f"{imported.reason}: {imported.detail}")
    self.assertEqual(int(imported.images[0][0, 0, 0]), 17)
    self.assertTrue(read.ok, f"{read.reason}: {read.detail}")
    np.testing.assert_array_equal(read.images[0], EXPECTED)

  def test_the_jail_hides_what_is_not_bound(self):
    peek = (f"import os\nfrom PIL import Image\n"
            f"visible = os.path.exists({self.data + '/source.png'!r})\n"
            f"image = Image.new('RGB', (64, 64), (255 * visible, 0, 0))\n")
    with SandboxPool(SandboxConfig(workers=1,
                                   require=("private_root",))) as pool:
      result = pool.map([PlotJob(peek)])[0]
    self.assertTrue(result.ok, f"{result.reason}: {result.detail}")
    self.assertEqual(int(result.images[0][0, 0, 0]), 0)


if __name__ == "__main__":
  absltest.main()
