"""Qwen3-VL (dense): vision tower with DeepStack, Qwen3 decoder, the VLM module
and checkpoint names."""
