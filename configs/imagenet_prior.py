"""Class-conditional ImageNet prior on the f16-16384 tokenizer (taming's cIN transformer recipe).

    python -m vqgan_jax.tokenizer.convert_taming --ckpt=last.ckpt --yaml=model.yaml --workdir=gs://BUCKET/taming_16384
    python -m vqgan_jax.main --config=configs/imagenet_prior.py --workdir=gs://BUCKET/prior \
        --config.tokenizer_workdir=gs://BUCKET/taming_16384 --config.data.tfds_manual_dir=...

256x256 images -> 16x16 = 256 codes, class token prefix. taming's cIN model is a GPT with
24 layers, 16 heads, 1536 wide (~1.4B parameters with its 16384-way head); this default is a
GPT-2-medium-sized 24 x 1024 (about 330M parameters) that fits a v4-32/v5e-32 slice with FSDP;
scale `model.*` up to taming's size on larger slices. Global batch 256, AdamW (0.9, 0.95),
warmup + cosine, label dropout 0.1 for classifier-free guidance.
"""
from vqgan_jax.data import input_pipeline
from vqgan_jax.prior.config import base_prior_config


def get_config():
  config = base_prior_config()
  config.dtype = "bfloat16"
  config.tokenizer_workdir = "workdirs/taming_f16_16384"
  config.conditioning = "class"
  config.label_dropout = 0.1
  config.num_train_steps = 500_000
  config.batch_size = 256
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.eval_every_steps = 10_000
  config.num_eval_images = 10_000
  config.image_every_steps = 5000
  config.param_sharding = "fsdp"
  config.model.update(dict(num_layers=24, num_heads=16, embed_dim=1024, dropout=0.0))
  config.optimizer.update(dict(learning_rate=4.5e-4, warmup_steps=5000, weight_decay=0.05,
                               grad_clip_norm=1.0))
  config.data = input_pipeline.imagenet_data_config(256)
  config.sample.update(dict(num_samples=50_000, batch_size=256, top_k=0, top_p=1.0,
                            guidance_scale=1.5, fid=True))
  return config
