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

  def names(self) -> list[str]:
    if not self.layers:
      return [self.name]
    return [self.name.format(i=i) for i in range(self.layers)]
