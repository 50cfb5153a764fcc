"""EvoLMM task text: prompts, and warm-start targets through the rewards' own parsers."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest

from evejax.data import scene_questions as sq
from evejax.recipes import evolmm_tasks as tasks
from evejax.rewards import evolmm as evolmm_rewards
from evejax.rl import answers


class PromptTest(absltest.TestCase):

  def test_proposer_prompt(self):
    full = tasks.proposer_prompt()
    self.assertIn("<question></question>", full)
    self.assertIn("Do not answer", full)
    self.assertIn("<question></question>", tasks.proposer_prompt("compact"))
    self.assertLess(len(tasks.proposer_prompt("compact")), len(full) / 3)

  def test_solver_prompt(self):
    for style in tasks.STYLES:
      text = tasks.solver_prompt("How many circles are there?", style)
      self.assertTrue(text.startswith("How many circles are there?\n"))
      self.assertIn("<answer></answer>", text)

  def test_bad_style(self):
    with self.assertRaisesRegex(ValueError, "style 'short'.*'full', 'compact'"):
      tasks.proposer_prompt("short")


class WarmStartTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.questions = sq.sample_questions(0, 60)

  def test_proposer_targets_parse_to_the_question_without_the_answer(self):
    for q in self.questions:
      _, target = tasks.proposer_sft_pair(q, "compact")
      self.assertEqual(tasks.parse_question(target), (q.question, "ok"))
      rationale = target.split("</question>", 1)[1]
      self.assertNotIn(q.answer, answers.normalize_text(rationale).split())

  def test_solver_targets_carry_the_gold_answer(self):
    for q in self.questions:
      prompt, target = tasks.solver_sft_pair(q)
      self.assertTrue(prompt.startswith(q.question))
      self.assertEqual(tasks.solver_answer(target), answers.normalize_text(q.answer))
      self.assertTrue(tasks.is_correct(target, q.answer))
      # Five agreeing replies: full self-consistency, no length penalty.
      rewards = evolmm_rewards.solver_rewards([target] * 5)
      self.assertEqual([(r.value, r.reason) for r in rewards], [(1.0, "ok")] * 5)

  def test_grading(self):
    self.assertTrue(tasks.is_correct("It is <answer>Red.</answer>", "red"))
    self.assertTrue(tasks.is_correct("I count them\n3", "3"))  # last line, no tag
    self.assertTrue(tasks.is_correct("<answer>3.0</answer>", "3"))
    self.assertFalse(tasks.is_correct("<answer>blue</answer>", "red"))
    self.assertFalse(tasks.is_correct("", "red"))

  def test_bad_replies_are_reasons(self):
    self.assertEqual(tasks.parse_question("What colour is it?"), (None, "no_question_tag"))
    self.assertEqual(tasks.parse_question("<question> </question>"),
                     (None, "no_question_tag"))
    reward = evolmm_rewards.solver_rewards(["", "<answer>red</answer>"])[0]
    self.assertEqual((reward.value, reward.reason), (0.0, "no_answer"))


if __name__ == "__main__":
  absltest.main()
