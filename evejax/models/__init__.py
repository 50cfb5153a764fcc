"""Vision-language models of every family, as Flax modules applied functionally.

`vlm` is the one interface the rest of evejax calls (init, scoring, prefill,
decode, inference layout); `hf` imports and exports Hugging Face checkpoints;
`presets` holds `ModelConfig` and the named shapes; `families` maps a
config's family to its modules, checkpoint names and host-processing facts.
The families: `qwen2_5_vl/` (Qwen2.5-VL), `qwen3_vl/` (Qwen3-VL, dense) and
`qwen3_5/` (Qwen3.5, dense: Gated DeltaNet + gated attention, a hybrid
cache), built from `layers`, `decoder` and `vlm_base`.
"""
