"""Qwen2.5-VL: vision tower, Qwen2 decoder, the VLM module and checkpoint names."""
