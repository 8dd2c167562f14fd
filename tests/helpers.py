"""What many tests share: the repository root and loading a config file as `--config` does."""
import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, variant: str = ""):
  """Loads configs/<name>.py's get_config(variant), as `--config=configs/<name>.py:variant` does."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()
