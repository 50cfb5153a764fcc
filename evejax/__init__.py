"""evejax: self-evolving vision-language models in JAX."""
