"""Stage 1, the VQGAN tokenizer: its config, trainer, losses, evaluation and evaluators, codebook
view, saved-model loading and the taming-transformers converter.

`load_tokenizer(workdir)` restores a trained or converted tokenizer (also `vqgan_jax.load_tokenizer`).
"""
from vqgan_jax.tokenizer.load import load_tokenizer

__all__ = ["load_tokenizer"]
