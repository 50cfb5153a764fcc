"""MM-Zero task text: prompts, warm-start pairs through the rewards' parsers, bad input.

Warm-start targets are checked by the same functions that score the model's
replies (`rewards.mmzero`), and Coder targets are rendered by the real
sandbox. Bad Coder output (huge, deeply nested, not SVG, no code) is run
through the sandbox too: each comes back as a classified failure, never an
exception. Entities, external files and oversized canvases are in the
sandbox's adversarial corpus (tests/sandbox_corpus/svg_*.svg).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import numpy as np

from evejax.data import mmzero_library as lib
from evejax.recipes import mmzero_tasks as tasks
from evejax.rewards import mmzero as mmzero_rewards
from evejax.rl import answers
from evejax.sandbox import PlotJob, Reason, SandboxConfig, SandboxPool, SvgJob

TAGS = ("content_type", "caption", "easy_question", "easy_answer", "hard_question",
        "hard_answer")


def _items(seeds=range(4)):
  return [lib.make_item(k, np.random.default_rng(s)) for k in lib.KINDS for s in seeds]


class PromptTest(absltest.TestCase):

  def test_topics(self):
    self.assertLen(tasks.TOPICS, 8)
    self.assertLen(set(tasks.TOPICS.values()), 8)
    self.assertEqual({spec.topic for spec in lib.KINDS.values()}, set(tasks.TOPICS))

  def test_proposer_prompt_asks_for_the_six_tags(self):
    for style in tasks.STYLES:
      text = tasks.proposer_prompt(tasks.TOPICS["charts"], style)
      self.assertIn("reading charts and graphs", text)
      for tag in TAGS:
        self.assertIn(f"<{tag}>", text, style)
    full = tasks.proposer_prompt("maps of rivers")
    for kind in mmzero_rewards.CONTENT_TYPES:
      self.assertIn(kind, full)
    self.assertIn("single number", full)
    self.assertLess(len(tasks.proposer_prompt("x", "compact")), len(full) / 3)

  def test_coder_prompt(self):
    item = lib.make_item("bar_chart", np.random.default_rng(0))
    for backend, fence in (("svg", "```svg"), ("plot", "```python")):
      for style in tasks.STYLES:
        text = tasks.coder_prompt(item, backend, style)
        for part in (item.caption, item.easy_question, item.hard_question):
          self.assertIn(part, text)
        self.assertIn(fence if style == "full" else fence.strip("`"), text)
      self.assertIn(f"answer: {item.hard_answer}", tasks.coder_prompt(item, backend))
    self.assertIn("xmlns", tasks.coder_prompt(item, "svg"))
    self.assertIn("draw()", tasks.coder_prompt(item, "plot"))
    self.assertIn("draw()", tasks.coder_prompt(item, "plot", "compact"))
    self.assertNotIn(f"{item.hard_answer}\n", tasks.coder_prompt(item, "svg", "compact"))

  def test_solver_prompt(self):
    for style in tasks.STYLES:
      text = tasks.solver_prompt("How many bars?", style)
      self.assertTrue(text.startswith("How many bars?"))
      self.assertIn("<think>", text)
      self.assertIn("\\boxed{", text)

  def test_bad_names_are_named(self):
    with self.assertRaisesRegex(ValueError, "style 'tiny'.*'full', 'compact'"):
      tasks.solver_prompt("q", "tiny")
    with self.assertRaisesRegex(ValueError, "backend 'png'.*'svg', 'plot'"):
      tasks.coder_prompt(lib.make_item("circles", np.random.default_rng(0)), "png")
    with self.assertRaisesRegex(ValueError, "'easy' or 'hard'"):
      tasks.solver_sft_pair(lib.make_item("circles", np.random.default_rng(0)), "medium")


class WarmStartTest(absltest.TestCase):

  def test_proposer_targets_parse_back_to_the_item(self):
    items = _items()
    for item in items:
      prompt, target = tasks.proposer_sft_pair(item, style="compact")
      self.assertIn(tasks.TOPICS[item.topic], prompt)
      proposal, reason = mmzero_rewards.parse_proposer_output(target)
      self.assertEqual(reason, "ok")
      self.assertEqual(proposal, tasks.proposal_of(item))
      self.assertEqual(proposal.content_type, item.content_type)  # survives normalisation
    outcomes = [[mmzero_rewards.RenderOutcome(True, 1.0, 0.5)]] * len(items)
    rewards = mmzero_rewards.proposer_rewards(
        [tasks.proposer_sft_pair(it)[1] for it in items], outcomes)
    self.assertTrue(all(r.reason == "ok" and r.value > 0 for r in rewards))

  def test_solver_targets_have_the_method_format_and_the_answer(self):
    for item in _items(range(2)):
      for which in ("easy", "hard"):
        prompt, target = tasks.solver_sft_pair(item, which)
        qa = getattr(item, which)
        self.assertTrue(prompt.startswith(qa.question))
        self.assertTrue(mmzero_rewards.solver_format_ok(target), target)
        self.assertEqual(answers.extract_boxed(target), qa.answer)
        reward = mmzero_rewards.solver_reward(target, qa.answer)
        self.assertEqual((reward.value, reward.reason), (1.0, "ok"))

  def test_coder_targets_extract_and_render(self):
    items = _items(range(2))
    pairs = {b: [tasks.coder_sft_pair(it, b, "compact") for it in items]
             for b in tasks.BACKENDS}
    for item, (_, target) in zip(items, pairs["svg"]):
      self.assertEqual(tasks.extract_code(target, "svg"), item.svg)
    for item, (_, target) in zip(items, pairs["plot"]):
      self.assertEqual(tasks.extract_code(target, "plot"), item.plot_program.strip())
    self.assertEqual(tasks.item_job(items[0], "svg"), SvgJob(items[0].svg))
    self.assertEqual(tasks.item_job(items[0], "plot"), PlotJob(items[0].plot_program))
    with SandboxPool(SandboxConfig(workers=2)) as pool:
      results = {b: pool.map([tasks.render_job(t, b) for _, t in pairs[b]])
                 for b in tasks.BACKENDS}
    for backend, res in results.items():
      for item, r in zip(items, res):
        self.assertTrue(r.ok, f"{backend} {item.kind}: {r.reason} {r.detail}")
    reward = mmzero_rewards.coder_reward(pairs["svg"][0][1], True, 1.0, 0.5)
    self.assertEqual((reward.value, reward.reason), (2.5, "ok"))

  def test_answers_are_short(self):
    self.assertTrue(tasks.is_short_answer("New York City"))
    self.assertFalse(tasks.is_short_answer("the bar on the far left of it"))
    self.assertFalse(tasks.is_short_answer(""))
    self.assertFalse(tasks.is_short_answer("4\n5"))


HUGE_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="50" height="50">'
            + '<rect width="1" height="1"/>' * 8000 + "</svg>")
NESTED_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="50" height="50">'
              + "<g>" * 5000 + '<rect width="10" height="10"/>' + "</g>" * 5000 + "</svg>")
PYTHON_REPLY = "```python\nprint('hello')\n```"
RAISING_PLOT = "```python\ndef draw():\n    return 1 / 0\n```"


class BadCoderOutputTest(absltest.TestCase):
  """Bad Coder replies: a classified sandbox result and a Coder reward with a reason."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cases = [
        ("huge", f"```svg\n{HUGE_SVG}\n```", "svg", {Reason.INVALID_PROGRAM}),
        ("nested", f"```svg\n{NESTED_SVG}\n```", "svg",
         {Reason.SYNTAX_ERROR, Reason.EXCEPTION, Reason.INVALID_OUTPUT}),
        ("python for svg", PYTHON_REPLY, "svg", {Reason.NO_CODE}),
        ("words", "I cannot draw that.", "svg", {Reason.NO_CODE}),
        ("fenced words", "```svg\nhello\n```", "svg", {Reason.NO_CODE}),
        ("no block for plot", "draw a bar", "plot", {Reason.NO_CODE}),
        ("plot raises", RAISING_PLOT, "plot", {Reason.EXCEPTION}),
    ]
    with SandboxPool(SandboxConfig(workers=2, timeout_s=10.0, svg_timeout_s=10.0)) as pool:
      cls.results = pool.map([tasks.render_job(reply, b) for _, reply, b, _ in cls.cases])

  def test_each_is_a_classified_failure(self):
    self.assertGreater(len(HUGE_SVG), 200_000)
    for (name, _, _, reasons), res in zip(self.cases, self.results):
      self.assertFalse(res.ok, name)
      self.assertIn(res.reason, reasons, f"{name}: {res.detail}")
      self.assertTrue(res.detail, name)

  def test_coder_rewards_count_the_reason(self):
    reasons = {name: mmzero_rewards.coder_reward(reply, res.ok).reason
               for (name, reply, backend, _), res in zip(self.cases, self.results)
               if backend == "svg"}
    self.assertEqual(reasons, {"huge": "render_failed", "nested": "render_failed",
                               "python for svg": "empty_code", "words": "empty_code",
                               "fenced words": "not_svg"})

  def test_unparseable_proposals_and_unboxed_replies(self):
    good = tasks.proposer_sft_pair(lib.make_item("table", np.random.default_rng(0)))[1]
    missing = good.replace("<hard_answer>", "<hard answer>")
    rewards = mmzero_rewards.proposer_rewards([good, missing], [[], []])
    self.assertEqual(rewards[1].value, -1.0)
    self.assertEqual(rewards[1].reason, "missing_tags=hard_answer")
    reward = mmzero_rewards.solver_reward("<think>it is 4</think> 4", "4")
    self.assertEqual((reward.value, reward.reason), (0.0, "no_boxed_answer"))


if __name__ == "__main__":
  absltest.main()
