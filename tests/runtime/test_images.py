"""uint8 conversion: the on-device version equals the host one bit for bit."""
import jax
import numpy as np

from vqgan_jax.runtime import images


def test_to_uint8_on_device_equals_to_uint8():
  halfway = (np.arange(-2, 258, dtype=np.float32) + 0.5) / np.float32(127.5) - 1  # Ties.
  values = np.concatenate([halfway, np.linspace(-1.2, 1.2, 10001, dtype=np.float32),
                           np.nextafter(halfway, np.float32(2)),
                           np.nextafter(halfway, np.float32(-2))]).reshape(-1, 1, 1, 1)
  on_device = np.asarray(jax.jit(images.to_uint8_on_device)(values))
  assert on_device.dtype == np.uint8
  np.testing.assert_array_equal(on_device, images.to_uint8(values))
