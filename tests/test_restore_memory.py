"""`vqgan_jax.restore_memory` measures what it says: a resume restores the whole state it wrote,
`load_tokenizer` only the generator weights; both report a peak and a repeat (no thresholds:
the README holds the numbers measured on configs/imagenet.py)."""
import jax
import numpy as np

from tests.helpers import load_config
from vqgan_jax import restore_memory


def test_resume_restores_the_whole_state_and_load_only_the_generator(tmp_path):
  config = load_config("tiny", "test")
  config.ema_decay = 0.999
  workdir = str(tmp_path / "run")
  state_bytes = restore_memory.write_checkpoint(config, workdir)
  resume = restore_memory.measure(config, workdir, "resume")
  load = restore_memory.measure(config, workdir, "load")
  assert resume["restored_bytes"] == state_bytes
  assert resume["again"]["restored_bytes"] == state_bytes
  from vqgan_jax.tokenizer.load import load_tokenizer  # pylint: disable=g-import-not-at-top
  _, variables = load_tokenizer(workdir)
  generator_bytes = sum(x.nbytes for x in jax.tree.leaves(variables))
  assert load["restored_bytes"] == generator_bytes < state_bytes / 2
  for result in (resume, resume["again"], load, load["again"]):
    assert result["rss_before_bytes"] > 0 and np.isfinite(result["extra_peak_over_restored"])
