"""--mode=codebook: the usage histogram over the eval split and every code decoded alone."""
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from PIL import Image

from tests.helpers import REPO
from vqgan_jax.data import input_pipeline
from vqgan_jax.tokenizer import codebook_view
from vqgan_jax.tokenizer import load_tokenizer


def test_mode_codebook_writes_atlas_histogram_and_counts(trained):
  config, workdir = trained
  result = subprocess.run(
      [sys.executable, "-m", "vqgan_jax.main", "--config=configs/tiny.py:test",
       f"--workdir={workdir}", "--mode=codebook"],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ))
  assert result.returncode == 0, result.stderr[-3000:]
  out = workdir / "codebook"
  with open(out / "usage_2.json") as f:
    summary = json.load(f)
  k = config.model.codebook_size
  counts = np.array(summary["counts"])
  tokens_per_image = (config.data.image_size // 2)**2  # ch_mult (1, 2): f2.
  assert counts.sum() == input_pipeline.num_eval_examples(config) * tokens_per_image
  assert summary["codebook_usage"] == np.mean(counts > 0)
  assert summary["unused_codes"] == int(np.sum(counts == 0))
  order = np.array(summary["order_by_usage"])
  assert sorted(order) == list(range(k)) and np.all(np.diff(counts[order]) <= 0)

  # Tiles: ceil(sqrt(K)) columns of 16x16 decoded codes with 1-pixel gaps, most used first.
  atlas = np.asarray(Image.open(out / "codes_2.png"))
  columns = math.ceil(math.sqrt(k))
  assert atlas.shape == ((-(-k // columns)) * 17 + 1, columns * 17 + 1, 3)
  model, variables = load_tokenizer(str(workdir))
  first = codebook_view.decode_every_code(model, variables, order[:1])[0]
  np.testing.assert_array_equal(atlas[1:17, 1:17], first)
  constant = jnp.full((1, 10, 10), int(order[0]))
  direct = model.apply(variables, constant, method="decode_indices")[0, 2:-2, 2:-2]
  # A decode of another map size rounds differently in the last float bit: +-1 in uint8.
  direct_uint8 = np.clip(np.round((np.asarray(direct) + 1) * 127.5), 0, 255)
  np.testing.assert_allclose(first.astype(np.float32), direct_uint8, rtol=0, atol=1)
  assert Image.open(out / "usage_2.png").size[0] > 0
