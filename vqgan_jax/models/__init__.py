"""Flax linen modules: autoencoder, quantizer, discriminator, LPIPS."""
