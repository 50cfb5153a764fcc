"""One process of multihost_test's slot-decoding case: `python multihost_sampling.py
PROCESS_ID PORT`, 2 processes x 1 CPU device, uneven prompts (7 and 4).

Each process checks that slot decoding gives its rows exactly as the static path
does (the same tokens, log-probs and prompt ids) and hands each row to on_row
once, then prints "OK" and its decode stats.
"""
import sys

from evejax import distributed

distributed.initialize(f"127.0.0.1:{sys.argv[2]}", 2, int(sys.argv[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from evejax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from evejax import sampling  # pylint: disable=g-import-not-at-top,wrong-import-position
import sampling_test as st  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  me = distributed.process_index()
  params = st._Fake.init_params(jax.random.key(0))  # pylint: disable=protected-access
  mesh = parallel.make_mesh({"data": 1, "fsdp": 2, "tensor": 1})
  prompts = st._examples((st.PROMPTS * 3)[:7 if me == 0 else 4])  # pylint: disable=protected-access
  sp = sampling.SamplingParams(max_new_tokens=12, temperature=1.3, group_size=2,
                               eos_ids=(20, 30))
  kw = dict(length_buckets=(8, 16), patch_buckets=(0, 4), batch_buckets=(2, 4, 8),
            max_cache=48, model=st._Fake, mesh=mesh)  # pylint: disable=protected-access
  want = sampling.Sampler(st.tiny(), **kw).generate(params, prompts, sp, seed=1)
  rows = []
  slots = sampling.Sampler(st.tiny(), decode_mode="slots", refill_every=3, **kw)
  out = slots.generate(params, prompts, sp, seed=1, on_row=lambda r, *_: rows.append(r))
  np.testing.assert_array_equal(out.tokens, want.tokens)
  np.testing.assert_allclose(out.logprobs, want.logprobs, atol=1e-6)
  np.testing.assert_array_equal(out.prompt_index, want.prompt_index)
  assert sorted(rows) == list(range(want.num_rows)), rows
  assert len(set(want.lengths.tolist())) > 1
  print("OK", me, out.stats, flush=True)


if __name__ == "__main__":
  main()
