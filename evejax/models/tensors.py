"""`TensorEntry`: one evejax parameter leaf and the checkpoint tensor(s) it is made of.

Each family's checkpoint module lists its entries (`tensor_table(config)`);
`evejax.models.hf` reads and writes checkpoints from them and adapters (LoRA,
PEFT) map evejax paths to Hugging Face module names through them.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TensorEntry:
  """One evejax leaf and the checkpoint tensor(s) it is made of."""
  path: tuple[str, ...]   # keys into the params dict
  name: str               # hub-style tensor name; '{i}' = layer index
  hf_shape: tuple[int, ...]
  kind: str               # 'linear': hf [out, in...] -> [in..., out...]; 'same'
  layers: int = 0         # >0: stacked leaf built from this many tensors
  # The checkpoint layer of each stacked entry (default 0..layers-1): a
  # stack of one kind of layer out of several (Qwen3.5) names its own.
  layer_ids: tuple[int, ...] = ()
  # 'linear' only: our flattened output channel j is the checkpoint's
  # output row out_order[j] (default: the same order).
  out_order: tuple[int, ...] = ()

  def names(self) -> list[str]:
    if not self.layers:
      return [self.name]
    ids = self.layer_ids or range(self.layers)
    return [self.name.format(i=i) for i in ids]

  def rows_to_ours(self, x):
    """Reorders the checkpoint's output rows (axis 0) into ours."""
    return x[list(self.out_order)] if self.out_order else x

  def rows_to_theirs(self, x):
    """Inverse of `rows_to_ours`."""
    if not self.out_order:
      return x
    out = x.copy()
    out[list(self.out_order)] = x
    return out
