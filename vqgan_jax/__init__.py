"""vqgan_jax: a taming-exact VQGAN tokenizer and transformer prior in JAX/Flax.

`load_tokenizer(workdir)` restores a trained or converted tokenizer:

    model, variables = vqgan_jax.load_tokenizer("workdirs/tiny")
    codes = model.apply(variables, images, method="encode_to_indices")
    images = model.apply(variables, codes, method="decode_indices")
"""
from vqgan_jax.tokenizer import load_tokenizer

__all__ = ["load_tokenizer"]
__version__ = "0.1.0"
