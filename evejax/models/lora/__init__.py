"""LoRA adapters over one frozen backbone, interchangeable with PEFT.

    cfg = lora.from_config(config.train.lora)        # None when rank is 0
    adapter = lora.init_adapter(cfg, model_config, rng)   # B = 0: the base model
    axes = lora.adapter_axes(adapter, vlm.param_axes(model_config))

    # Training: differentiate with respect to the adapter only.
    def loss(adapter, params, inputs, rng):
      h = lora.apply(vlm.hidden_states, params, adapter, cfg, model_config,
                     inputs, dropout_rng=rng)
      ...
    grads = jax.grad(loss)(adapter, params, inputs, rng)
    opt_state = tx.init(adapter)                      # moments for A and B only

    # Reference policy (KL): the backbone with the adapters truly off.
    h_ref = vlm.hidden_states(params, model_config, inputs)

    # Sampling: the adapter merged into the sampler's unrolled weights.
    sampler = Sampler(model_config, model=lora.AdaptedModel(cfg), ...)
    sampler.generate({"backbone": params, "adapter": adapter}, prompts, ...)

    # Interchange.
    lora.export_peft(adapter, cfg, model_config, out_dir)
    adapter, cfg = lora.import_peft(peft_dir, model_config)
    lora.export_merged(params, adapter, cfg, model_config, hf_dir)

Several named adapters over one backbone are a plain dict {name: adapter}
(e.g. EvoLMM's {"proposer": ..., "solver": ...}): the backbone arrays exist
once, each adapter has its own optimizer state, and `apply`/`merge` pick one.

Modules:
  config.py         LoraConfig, from_config, target regexes -> kernels
  adapter.py        init_adapter, adapter_axes, merge, apply (low-rank path,
                    dropout), dropout_key / dropout_mask
  peft_format.py    export_peft, import_peft, export_merged
  adapted_model.py  AdaptedModel: the Sampler's model protocol with an adapter
"""
from evejax.models.lora.adapted_model import AdaptedModel
from evejax.models.lora.adapter import adapter_axes
from evejax.models.lora.adapter import apply
from evejax.models.lora.adapter import dropout_key
from evejax.models.lora.adapter import dropout_mask
from evejax.models.lora.adapter import init_adapter
from evejax.models.lora.adapter import merge
from evejax.models.lora.adapter import modules
from evejax.models.lora.config import LINEAR_ATTENTION_PROJECTIONS
from evejax.models.lora.config import LoraConfig
from evejax.models.lora.config import TEXT_PROJECTIONS
from evejax.models.lora.config import VISION_MERGER
from evejax.models.lora.config import from_config
from evejax.models.lora.config import linear_kernels
from evejax.models.lora.config import select_targets
from evejax.models.lora.peft_format import export_merged
from evejax.models.lora.peft_format import export_peft
from evejax.models.lora.peft_format import import_peft
from evejax.models.lora.peft_format import module_name

__all__ = [
    "AdaptedModel", "LINEAR_ATTENTION_PROJECTIONS", "LoraConfig",
    "TEXT_PROJECTIONS", "VISION_MERGER",
    "adapter_axes", "apply", "dropout_key", "dropout_mask", "export_merged",
    "export_peft", "from_config", "import_peft", "init_adapter",
    "linear_kernels", "merge", "module_name", "modules", "select_targets",
]
