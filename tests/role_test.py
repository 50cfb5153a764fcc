"""Samples as a batch over processes (another process simulated) and the reward
metrics every update logs."""
import json
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest

from evejax import distributed
from evejax.recipes import role as role_lib
from evejax.rewards.registry import Reward


def as_process_0_of_2(*other_process_objs):
  """Patches the gathers: process 1 contributes the given objects, one per gather."""
  others = [json.dumps(x).encode() for x in other_process_objs]
  return [mock.patch.object(jax, "process_count", return_value=2),
          mock.patch.object(jax, "process_index", return_value=0),
          mock.patch.object(distributed, "allgather_bytes",
                            side_effect=lambda b: [b, others.pop(0)])]


def samples_of_prompt(prompt_id: int, texts, total_rows=None):
  """This process's rows: one prompt (id `prompt_id`), a group of len(texts)."""
  toks = [np.arange(3, dtype=np.int32) for _ in texts]
  return role_lib.Samples(kept=[0], group=len(texts), prompts=[None], tokens=toks,
                          logprobs=[np.zeros(3, np.float32)] * len(texts), texts=list(texts),
                          total_rows=total_rows, prompt_ids=[prompt_id])


class SamplesTest(absltest.TestCase):

  def test_rows_gather_in_id_order_and_come_back_out(self):
    mine = samples_of_prompt(1, ["x", "y"], total_rows=4)   # row ids 2, 3; process 1: 0, 1
    self.assertEqual(mine.ids_of(), [2, 3])
    patches = as_process_0_of_2([[0, "u"], [1, "v"]], [0, 1])
    with patches[0], patches[1], patches[2]:
      self.assertEqual(mine.gather(mine.texts), ["u", "v", "x", "y"])
      self.assertEqual(mine.mine([10, 11, 12, 13]), [12, 13])
    # One process: its rows are the batch, in row-id order.
    alone = samples_of_prompt(0, ["a", "b", "c"])
    self.assertEqual(alone.gather(alone.texts), ["a", "b", "c"])
    self.assertEqual(alone.mine([5, 6, 7]), [5, 6, 7])

  def test_rewards_gather_with_their_parts(self):
    mine = samples_of_prompt(0, ["x"], total_rows=2)
    patches = as_process_0_of_2([[1, [0.5, "wrong", {"accuracy": 0.0}]]])
    with patches[0], patches[1], patches[2]:
      got = mine.gather_rewards([Reward(1.0, "ok", {"accuracy": 1.0})])
    self.assertEqual([(r.value, r.reason, dict(r.parts)) for r in got],
                     [(1.0, "ok", {"accuracy": 1.0}), (0.5, "wrong", {"accuracy": 0.0})])

  def test_selected_rows_are_a_batch_of_their_own(self):
    mine = samples_of_prompt(4, ["p", "q", "r"])   # row ids 12, 13, 14
    patches = as_process_0_of_2(0)   # process 1 selects nothing
    with patches[0], patches[1], patches[2]:
      one = mine.select([2])
    self.assertEqual((one.texts, one.group, one.ids_of(), one.total_rows), (["r"], 1, [14], 1))

  def test_chunks_concatenate_in_order(self):
    a, b = samples_of_prompt(0, ["a"]), samples_of_prompt(1, ["b"])
    b.kept = [1]
    both = role_lib.Samples.concat([a, b])
    self.assertEqual((both.kept, both.texts, both.ids_of(), both.total_rows),
                     ([0, 1], ["a", "b"], [0, 1], 2))


class RewardMetricsTest(absltest.TestCase):

  def test_mean_and_numeric_parts_over_the_rows_that_have_them(self):
    rewards = [Reward(1.0, "ok", {"accuracy": 1.0, "too_easy": True, "answer": "A"}),
               Reward(-1.0, "unparseable"),
               Reward(0.5, "ok", {"accuracy": 0.0, "too_easy": False, "answer": "B"})]
    self.assertEqual(role_lib.reward_metrics(rewards),
                     {"reward/mean": 0.5 / 3, "reward/accuracy": 0.5, "reward/too_easy": 0.5})
    self.assertEqual(role_lib.reward_metrics([0.0, 1.0]), {"reward/mean": 0.5})


if __name__ == "__main__":
  absltest.main()
