"""The eval split a workdir was trained against, as uint8 images (the codec benchmark's set)."""
from __future__ import annotations

import ml_collections
import numpy as np

from vqgan_jax.data import input_pipeline
from vqgan_jax.runtime import checkpoints, images as image_utils


def workdir_data_config(workdir: str, image_size: int | None = None) -> ml_collections.ConfigDict:
  """A config with the `data` fields and seed of WORKDIR's config.json (`image_size` replaced)."""
  saved = checkpoints.read_config(workdir)
  data = input_pipeline.default_data_config()
  data.update({k: tuple(v) if isinstance(v, list) else v
               for k, v in saved.get("data", {}).items() if k in data})
  if image_size is not None:
    data.image_size = image_size
  return ml_collections.ConfigDict({"data": data, "seed": saved.get("seed", 0)})


def eval_images(workdir: str, image_size: int | None = None, num_images: int = -1
                ) -> np.ndarray:
  """(N, H, W, 3) uint8: the first `num_images` (-1: all) eval images, in eval order."""
  config = workdir_data_config(workdir, image_size)
  images = []
  for batch in input_pipeline.create_eval_iterator(config, local_batch_size=64,
                                                   process_index=0, process_count=1):
    images.extend(image_utils.to_uint8(np.asarray(batch["image"])[np.asarray(batch["mask"]) > 0]))
    if 0 <= num_images <= len(images):
      break
  if not images:
    raise ValueError(f"The eval split of {workdir}'s data config is empty.")
  return np.stack(images[:num_images] if num_images >= 0 else images)
