"""Executes every notebook in colabs/ and fails on any cell error.

The notebooks run top to bottom in a fresh `python3` Jupyter kernel (nbclient)
from the repository root, on one CPU device, exactly as saved; assertions in
their cells (sandbox result ok, loss going down, ...) fail the test too.
Needs the test extra (`pip install -e '.[test]'`: nbclient, nbformat,
ipykernel); without nbclient the notebook tests are skipped.
"""
import json
import os
import pathlib
import re
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
from absl.testing import parameterized
import pytest

try:
  import nbclient
  import nbformat
except ImportError:  # The test extra is not installed.
  nbclient = nbformat = None

pytestmark = pytest.mark.slow   # the notebooks run end to end

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOKS = sorted(COLABS.glob("*.ipynb"))
CELL_TIMEOUT_S = 600
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")


def _kernel_env() -> dict[str, str]:
  """The test's environment for the kernel, on one CPU device and with evejax importable."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # The test session forces 8 host devices for sharding tests; a notebook is
  # meant for one device, and one is faster on a small machine.
  env["XLA_FLAGS"] = _DEVICE_COUNT_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
  return env


class ColabsTest(parameterized.TestCase):

  def test_readme_lists_every_notebook(self):
    self.assertNotEmpty(NOTEBOOKS, f"no notebooks in {COLABS}")
    readme = (COLABS / "README.md").read_text()
    for path in NOTEBOOKS:
      self.assertIn(path.name, readme, f"colabs/README.md does not list {path.name}")

  def test_first_cell_installs_only_when_evejax_is_missing(self):
    for path in NOTEBOOKS:
      first = _code_sources(path)[0]
      self.assertIn("pip install", first, path.name)
      self.assertRegex(first, r"if .*find_spec\(\"evejax\"\) is None:", path.name)

  @parameterized.named_parameters(
      (p.stem, p) for p in NOTEBOOKS)
  def test_notebook_executes(self, path):
    if nbclient is None:
      self.skipTest("nbclient is not installed; `pip install -e '.[test]'` (nbclient, "
                    "nbformat, ipykernel) to execute the notebooks in colabs/.")
    nb = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}})
    start = time.perf_counter()
    try:
      client.execute(env=_kernel_env())
    except nbclient.exceptions.CellExecutionError as e:
      self.fail(f"{path.name}: a cell failed:\n{e}")
    except nbclient.exceptions.CellTimeoutError as e:
      self.fail(f"{path.name}: a cell ran longer than {CELL_TIMEOUT_S} s:\n{e}")
    took = time.perf_counter() - start
    print(f"{path.name} executed in {took:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    self.assertEmpty(errors, path.name)
    # Every code cell ran, in order.
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    self.assertEqual(counts, list(range(1, len(counts) + 1)), path.name)


def _code_sources(path: pathlib.Path) -> list[str]:
  """The code cells' text (an .ipynb is JSON; no nbformat needed)."""
  cells = json.loads(path.read_text())["cells"]
  return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
          for c in cells if c["cell_type"] == "code"]


if __name__ == "__main__":
  absltest.main()
