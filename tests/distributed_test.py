"""The host-side helpers of several processes, with another process simulated:
how work is split and how gathered rows are ordered."""
import json
from unittest import mock

import jax
from absl.testing import absltest

from evejax import distributed


def as_process_0_of_2(other_process_obj):
  """Patches the gathers so that process 1 contributes `other_process_obj`."""
  other = json.dumps(other_process_obj).encode()
  return [mock.patch.object(jax, "process_count", return_value=2),
          mock.patch.object(distributed, "allgather_bytes", side_effect=lambda b: [b, other])]


class ShareTest(absltest.TestCase):

  def test_blocks_cover_the_range_once_and_differ_by_at_most_one(self):
    for n, count in ((10, 3), (2, 4), (0, 2), (7, 1)):
      blocks = [distributed.share(n, i, count) for i in range(count)]
      self.assertEqual([x for b in blocks for x in b], list(range(n)))
      self.assertLessEqual(max(map(len, blocks)) - min(map(len, blocks)), 1)


class GatherByIdTest(absltest.TestCase):

  def test_rows_of_both_processes_come_back_in_id_order(self):
    patches = as_process_0_of_2([[1, "b"], [4, "e"], [2, "c"]])
    with patches[0], patches[1]:
      got = distributed.gather_by_id([3, 0], ["d", "a"])
    self.assertEqual(got, ["a", "b", "c", "d", "e"])

  def test_one_process_sorts_its_own_rows(self):
    self.assertEqual(distributed.gather_by_id([2, 0, 1], [(2.5,), (0.5,), (1.5,)]),
                     [(0.5,), (1.5,), (2.5,)])

  def test_a_repeated_id_or_a_missing_row_is_an_error(self):
    patches = as_process_0_of_2([[0, "x"]])
    with patches[0], patches[1], self.assertRaisesRegex(ValueError, "share an id"):
      distributed.gather_by_id([0], ["a"])
    with self.assertRaises(ValueError):
      distributed.gather_by_id([0, 1], ["a"])


if __name__ == "__main__":
  absltest.main()
