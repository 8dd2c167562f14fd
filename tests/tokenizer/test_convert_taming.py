"""taming checkpoint conversion: numerical parity with taming's torch modules, strictness, CLI."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('taming')

from tests.tokenizer import taming_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position
from vqgan_jax.runtime import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from vqgan_jax.tokenizer import convert_taming  # pylint: disable=g-import-not-at-top,wrong-import-position
from vqgan_jax.models.discriminator import NLayerDiscriminator  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (ddconfig kwargs, image height x width, codebook size, embed_dim)
CONFIGS = {
    'ch64_attn_at_full_res': (dict(ch=64, ch_mult=(1, 2), num_res_blocks=1,
                                   attn_resolutions=(16,), resolution=16, z_channels=8),
                              (16, 16), 64, 8),
    'two_attn_levels_2_blocks_non_square': (dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=2,
                                                  attn_resolutions=(8, 4), resolution=16,
                                                  z_channels=16), (16, 32), 128, 8),
    'four_levels': (dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(4,),
                         resolution=32, z_channels=16), (32, 32), 512, 16),
}


def _rel_err(actual, reference):
  return float(np.max(np.abs(np.asarray(actual) - reference)) / np.max(np.abs(reference)))


def _numpy_state(reference):
  return {k: v.numpy() for k, v in reference.state_dict().items()}


@pytest.fixture(scope='module')
def with_discriminator(tmp_path_factory):
  """A small taming VQGAN + 2-layer PatchGAN written as last.ckpt and model.yaml."""
  dd_kwargs, _, n_embed, embed_dim = CONFIGS['ch64_attn_at_full_res']
  dd = tr.ddconfig(**dd_kwargs)
  reference = tr.build_vqgan(dd, n_embed, embed_dim, seed=3, disc_num_layers=2, disc_ndf=16)
  paths = tr.write_taming_checkpoint(str(tmp_path_factory.mktemp('taming')), reference, dd,
                                     n_embed, embed_dim)
  return reference, paths


@pytest.mark.parametrize('name', list(CONFIGS))
def test_autoencoder_matches_taming(name, tmp_path):
  dd_kwargs, (height, width), n_embed, embed_dim = CONFIGS[name]
  dd = tr.ddconfig(**dd_kwargs)
  reference = tr.build_vqgan(dd, n_embed, embed_dim, seed=1)
  images = np.random.RandomState(0).uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
  expected = reference.run(images)
  assert len(np.unique(expected['indices'])) > 4  # Many codes in play: a meaningful argmin.

  model, variables = convert_taming.load_taming(
      *tr.write_taming_checkpoint(str(tmp_path), reference, dd, n_embed, embed_dim))

  def stages(module, x):
    recon, out = module(x)
    return module.quant_conv(module.encoder(x)), recon, out, module.decode_indices(out.indices)

  latents, recon, out, decoded = jax.jit(
      lambda v, x: model.apply(v, x, method=stages))(variables, images)
  np.testing.assert_array_equal(out.indices, expected['indices'])
  assert _rel_err(latents, expected['latents']) < 1e-4
  assert _rel_err(out.quantized, expected['quantized']) < 1e-4
  assert _rel_err(recon, expected['reconstruction']) < 1e-4
  assert _rel_err(decoded, expected['reconstruction']) < 1e-4
  assert _rel_err(out.loss, expected['loss']) < 1e-4
  np.testing.assert_allclose(out.perplexity, expected['perplexity'], rtol=1e-4)


def test_discriminator_matches_taming(with_discriminator):
  reference, paths = with_discriminator
  _, variables = convert_taming.load_taming(*paths)
  disc = NLayerDiscriminator(ndf=16, num_layers=2)
  images = np.random.RandomState(1).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  torch_images = torch.from_numpy(images).permute(0, 3, 1, 2)
  torch_disc = reference.discriminator

  with torch.no_grad():
    eval_logits = torch_disc.eval()(torch_images).permute(0, 2, 3, 1).numpy()
    train_logits = torch_disc.train()(torch_images).permute(0, 2, 3, 1).numpy()
  torch_disc.eval()
  logits = disc.apply(variables['discriminator'], images, train=False)
  assert logits.shape == eval_logits.shape and logits.dtype == np.float32
  assert _rel_err(logits, eval_logits) < 1e-4
  logits, _ = disc.apply(variables['discriminator'], images, train=True, mutable=['batch_stats'])
  assert _rel_err(logits, train_logits) < 1e-4
  assert _rel_err(train_logits, eval_logits) > 1e-2  # The running stats matter.


def test_converter_names_every_bad_key(tmp_path):
  dd = tr.ddconfig()
  reference = tr.build_vqgan(dd, 64, 8, disc_num_layers=1, disc_ndf=8)
  _, yaml_path = tr.write_taming_checkpoint(str(tmp_path), reference, dd, 64, 8)
  config = convert_taming.taming_model_config(yaml_path)
  model_config, disc_config = config['model'], config['discriminator']
  assert disc_config == {'num_layers': 1, 'ndf': 8}
  good = _numpy_state(reference)
  assert convert_taming.convert_state_dict(good, model_config, disc_config)

  bad = dict(good, **{'decoder.up.9.block.0.conv1.weight': np.zeros(3, np.float32)})
  del bad['encoder.down.1.attn.0.q.bias']
  del bad['loss.discriminator.main.3.running_var']
  bad['quantize.embedding.weight'] = np.zeros((64, 9), np.float32)
  with pytest.raises(ValueError) as error:
    convert_taming.convert_state_dict(bad, model_config, disc_config)
  message = str(error.value)
  assert '4 problem(s)' in message
  assert 'missing key encoder.down.1.attn.0.q.bias' in message
  assert 'missing key loss.discriminator.main.3.running_var' in message
  assert 'unexpected key decoder.up.9.block.0.conv1.weight' in message
  assert ('shape mismatch for quantize.embedding.weight: checkpoint has (64, 9), model '
          'expects (64, 8)') in message

  with pytest.raises(ValueError, match='unexpected key loss.discriminator.main.0.weight'):
    convert_taming.convert_state_dict(good, model_config, None)


def test_discriminator_alone_converts():
  torch_disc = tr.build_discriminator(num_layers=3, ndf=8)
  state = {k: v.numpy() for k, v in torch_disc.state_dict().items()}
  variables = convert_taming.convert_discriminator(state, {'num_layers': 3, 'ndf': 8})
  np.testing.assert_array_equal(variables['params']['conv_out']['kernel'],
                                state['main.11.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['batch_stats']['norm_3']['var'],
                                state['main.9.running_var'])


def test_config_from_yaml_and_unsupported_files(with_discriminator, tmp_path):
  _, (_, yaml_path) = with_discriminator
  config = convert_taming.taming_model_config(yaml_path)
  assert config['model'] == dict(ch=64, out_ch=3, ch_mult=(1, 2), num_res_blocks=1,
                                 attn_resolutions=(16,), dropout=0.0, in_channels=3,
                                 resolution=16, z_channels=8, embed_dim=8, codebook_size=64,
                                 beta=0.25, legacy=True)
  assert config['discriminator'] == {'num_layers': 2, 'ndf': 16}

  text = open(yaml_path).read()
  defaults = tmp_path / 'defaults.yaml'  # taming's released configs omit the disc sizes.
  defaults.write_text(text.replace('disc_num_layers: 2', '').replace('disc_ndf: 16', ''))
  assert convert_taming.taming_model_config(str(defaults))['discriminator'] == {
      'num_layers': 3, 'ndf': 64}
  double_z = tmp_path / 'double_z.yaml'
  double_z.write_text(text.replace('double_z: false', 'double_z: true'))
  with pytest.raises(ValueError, match='double_z: False'):
    convert_taming.taming_model_config(str(double_z))
  gumbel = tmp_path / 'gumbel.yaml'
  gumbel.write_text(text.replace('taming.models.vqgan.VQModel', 'taming.models.vqgan.GumbelVQ'))
  with pytest.raises(ValueError, match='GumbelVQ'):
    convert_taming.taming_model_config(str(gumbel))


def test_reads_lightning_1x_checkpoints_without_lightning(with_discriminator, tmp_path,
                                                          monkeypatch):
  """Old Lightning pickles its ModelCheckpoint class as a dict key; that must not block a
  weights-only load, and nothing from the (absent) module may be imported."""
  reference, (_, yaml_path) = with_discriminator
  names = ('pytorch_lightning', 'pytorch_lightning.callbacks',
           'pytorch_lightning.callbacks.model_checkpoint')
  with monkeypatch.context() as patch:  # Importable only while saving.
    for name in names:
      patch.setitem(sys.modules, name, type(sys)(name))
    callback = type('ModelCheckpoint', (), {'__module__': names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = callback
    instance = callback()
    instance.monitor = 'val/rec_loss'
    ckpt_path = str(tmp_path / 'lightning.ckpt')
    torch.save({'state_dict': reference.state_dict(), 'pytorch-lightning_version': '1.0.8',
                'callbacks': {callback: {'best_model_score': torch.tensor(0.5)}},
                'loops': instance}, ckpt_path)
  with pytest.raises(Exception, match='ModelCheckpoint'):
    torch.load(ckpt_path, weights_only=True)  # What a plain weights-only load does.

  state = convert_taming.read_taming_state_dict(ckpt_path)
  assert not any(name in sys.modules for name in names)
  np.testing.assert_array_equal(state['quantize.embedding.weight'],
                                reference.quantize.embedding.weight.detach().numpy())
  _, variables = convert_taming.load_taming(ckpt_path, yaml_path)
  assert 'discriminator' in variables


def test_cli_writes_a_restorable_workdir(with_discriminator, tmp_path):
  _, (ckpt_path, yaml_path) = with_discriminator
  workdir = str(tmp_path / 'converted')
  env = dict(os.environ, PYTHONPATH=REPO)
  subprocess.run([sys.executable, '-m', 'vqgan_jax.tokenizer.convert_taming', f'--ckpt={ckpt_path}',
                  f'--yaml={yaml_path}', f'--workdir={workdir}'], check=True, cwd=REPO, env=env)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['model']['ch_mult'] == [1, 2] and config['model']['codebook_size'] == 64
  assert config['discriminator'] == {'num_layers': 2, 'ndf': 16}

  state, step = checkpoints.restore_raw_state(workdir)
  _, variables = convert_taming.load_taming(ckpt_path, yaml_path)
  assert step == 0
  for restored, converted in [(state['params'], variables['params']),
                              (state['disc_params'], variables['discriminator']['params']),
                              (state['disc_batch_stats'],
                               variables['discriminator']['batch_stats'])]:
    jax.tree.map(np.testing.assert_array_equal, restored, converted)


def test_converted_workdir_evaluates(with_discriminator, tmp_path):
  """`--mode=eval` reads a converted checkpoint's architecture from its config.json."""
  from tests.helpers import load_config  # pylint: disable=g-import-not-at-top
  from vqgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from vqgan_jax.tokenizer import evaluate  # pylint: disable=g-import-not-at-top
  _, (ckpt_path, yaml_path) = with_discriminator
  workdir = str(tmp_path / 'converted')
  convert_taming.convert_to_workdir(ckpt_path, yaml_path, workdir)
  config = load_config('tiny', 'test')  # 16x16 embedded photos; a different model config.
  config.eval_metrics = ('reconstruction', 'codebook')
  results = evaluate.evaluate_checkpoint(config, workdir)
  assert results['step'] == 0
  assert results['num_images'] == input_pipeline.num_eval_examples(config)
  assert all(np.isfinite(results[k]) for k in ('l1', 'lpips', 'psnr', 'ssim', 'perplexity'))
  assert os.path.exists(os.path.join(workdir, 'eval', 'metrics_0.json'))
