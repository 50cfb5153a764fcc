"""Qwen3.5 (dense): Gated DeltaNet + gated attention decoder, the Qwen3-VL
vision tower without DeepStack, the hybrid generation cache, checkpoint names."""
