"""tf.data building blocks behind `vqgan_jax.input_pipeline` (the public entry point)."""
