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


def free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# XLA:CPU backend optimisation level 0: the tests compile far more than they compute, and at
# level 0 XLA compiles ~40% faster (measured: the 32-device imagenet.py run, 140 -> 84 s; the
# tiny train step, 39 -> 19 s) while the big computations run slower (an Inception pass 1.6x).
# conftest.py sets it for every test process and launch_main for the processes it starts,
# unless a launch asks for XLA's defaults. Users' runs keep XLA's defaults.
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0"


def launch_main(args: list[str], *, devices: int, processes: int = 1, cwd=REPO,
                timeout: int = 900, fast_compile: bool = True) -> list[str]:
  """Runs `python -m vqgan_jax.main ARGS` as `processes` JAX processes (joined over gloo on
  127.0.0.1) with `devices` forced CPU devices each; returns their outputs, and fails the test
  with the failing process's log. Launches share the test run's compilation cache (conftest
  puts it in the environment); `fast_compile=False` compiles with XLA's defaults instead of
  `FAST_COMPILE_XLA_FLAGS`."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  xla_flags = f"--xla_force_host_platform_device_count={devices}"
  if fast_compile:
    xla_flags += " " + FAST_COMPILE_XLA_FLAGS
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
  command = [sys.executable, "-m", "vqgan_jax.main", *args]
  if processes > 1:
    port = free_port()
    commands = [command + [f"--coordinator_address=127.0.0.1:{port}",
                           f"--num_processes={processes}", f"--process_id={i}"]
                for i in range(processes)]
  else:
    commands = [command]
  procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for c in commands]
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    if p.returncode != 0:
      pytest.fail(f"process {i} of {' '.join(args)} failed:\n{out[-6000:]}")
  return outputs
