"""The soak tool: its numbers from samples, and one short run through the recipe runner."""
import json
import os
import tempfile

import pytest
from absl.testing import absltest

from evejax.tools import soak


def _samples(steps_per_phase=5, iterations=6, leak_mib=1.0):
  """Two phases per iteration; the first leaks `leak_mib` per RL step, the second holds
  more memory while it runs but none is kept."""
  out, step = [], 0
  for it in range(1, iterations + 1):
    for phase, base in (("challenger/challenger", 2000.0), ("solver/solver", 1400.0)):
      for _ in range(steps_per_phase):
        step += 1
        rss = base + (leak_mib * step if phase.startswith("challenger") else 0.0)
        out.append({"rl_step": step, "stage": f"{phase}/iter{it}", "rss_mib": rss,
                    "fds": 20 + step // 10, "threads": 40, "children": 6})
  return out


class SummariseTest(absltest.TestCase):

  def test_slopes_compare_each_phase_at_the_same_point_of_every_iteration(self):
    report = soak.summarise(_samples(), warmup=10)
    phases = report["rss_mib"]["phases"]
    self.assertAlmostEqual(phases["challenger/challenger"]["slope_per_100_steps"], 100.0)
    self.assertAlmostEqual(phases["solver/solver"]["slope_per_100_steps"], 0.0)
    self.assertEqual(phases["solver/solver"]["points"], 5)   # the first iteration is warm-up
    self.assertAlmostEqual(report["rss_mib"]["slope_per_100_steps"], 100.0)
    self.assertEqual((report["fds"]["first"], report["fds"]["last"]), (20, 26))
    self.assertEqual(report["rl_steps"], 60)
    line = soak.summary_line({"recipe": "eve", "preset": "tiny", "wall_s": 60.0, **report})
    self.assertIn("challenger/challenger +100.0, solver/solver +0.0", line)
    self.assertIn("fds 20 -> 26", line)


@pytest.mark.slow
class SoakRunTest(absltest.TestCase):

  def test_a_short_soak_of_the_staged_recipe(self):
    config = soak.configure("tests/lifecycle_recipes.py:staged", ["toy.steps=3"], steps=1)
    workdir = tempfile.mkdtemp()
    report = soak.soak(config, workdir, warmup=0)
    self.assertEqual(report["rl_steps"], 6)   # writer and reader, 3 steps each
    self.assertEqual(set(report["rss_mib"]["phases"]), {"learn/writer", "learn/reader"})
    self.assertGreater(report["rss_mib"]["first"], 100)
    self.assertEqual(report["children"]["first"], 0)   # no sandbox yet
    self.assertGreater(report["children"]["last"], 0)  # its workers, after the render stage
    with open(os.path.join(workdir, "soak.json")) as f:
      self.assertEqual(json.load(f)["rl_steps"], 6)


if __name__ == "__main__":
  absltest.main()
