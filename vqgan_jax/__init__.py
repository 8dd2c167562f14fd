"""vqgan_jax: a taming-exact VQGAN tokenizer and transformer prior in JAX/Flax.

The package reads as its architecture: `tokenizer/` (stage 1) and `prior/` (stage 2) run on
`runtime/` (loop, checkpoints, sharding, optimizers), `metrics/`, `models/` and `data/`;
`main.py` dispatches `--mode`.

`load_tokenizer(workdir)` restores a trained or converted tokenizer:

    model, variables = vqgan_jax.load_tokenizer("workdirs/tiny")
    codes = model.apply(variables, images, method="encode_to_indices")
    images = model.apply(variables, codes, method="decode_indices")
"""
from vqgan_jax.tokenizer.load import load_tokenizer

__all__ = ["load_tokenizer"]
__version__ = "0.1.0"
