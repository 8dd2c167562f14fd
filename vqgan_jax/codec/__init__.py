"""The tokenizer and its prior as an image codec (`python -m vqgan_jax.compress`)."""
