"""launch/: --dry-run prints the exact gcloud/sbatch commands, a real run executes those same
argument vectors, the remote run command works on a (simulated) worker, and shellcheck passes."""
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import time

import pytest

from tests.helpers import REPO

LAUNCH = REPO / "launch"
SCRIPTS = sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch") and p.name != "common.sh")
MAIN = "python -m vqgan_jax.main --config=configs/imagenet.py --workdir=gs://b/run"
TPU = ["--name", "vqgan", "--zone", "us-central2-b"]
RUN_ARGS = ["--", "--config=configs/imagenet.py", "--workdir=gs://b/run"]

# Records each call as a JSON line; on `scp` also lists the archive it was given.
STUB = """#!/usr/bin/env python3
import json, os, subprocess, sys
argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
record = {"argv": argv}
if "scp" in argv:
  record["archive"] = subprocess.run(["tar", "-tzf", argv[argv.index("scp") + 1]],
                                     capture_output=True, text=True, check=True).stdout.split()
with open(os.environ["STUB_LOG"], "a") as f:
  f.write(json.dumps(record) + "\\n")
"""


@pytest.fixture
def stubs(tmp_path):
  """PATH with gcloud, sbatch and srun replaced by recorders; returns (env, log path)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("gcloud", "sbatch", "srun"):
    (bin_dir / name).write_text(STUB)
    (bin_dir / name).chmod(0o755)
  env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
  env.update(PATH=f"{bin_dir}:{env['PATH']}", STUB_LOG=str(tmp_path / "calls.jsonl"), TMPDIR=str(tmp_path))
  return env, tmp_path / "calls.jsonl"


def launch(script, *args, env=None, check=True):
  if env is None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
  result = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                          env=env, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def dry_run(script, *args, env=None):
  return launch(script, "--dry-run", *args, env=env).stdout.splitlines()


def remote_command(line):
  """The --command string of a printed `gcloud compute tpus tpu-vm ssh` line."""
  words = shlex.split(line)
  return words[words.index("--command") + 1]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_zero_and_prints_usage(script):
  result = launch(script, "--help")
  assert "Usage" in result.stdout and f"launch/{script}" in result.stdout


@pytest.mark.parametrize("script, args, message", [
    ("tpu_create.sh", ["--zone", "z", "--accelerator-type", "v4-8"], "--name is required"),
    ("tpu_create.sh", TPU, "--accelerator-type is required"),
    ("tpu_create.sh", TPU + ["--accelerator-type", "v9-8"], "pass --runtime-version"),
    ("tpu_create.sh", TPU + ["--accelerator-type", "v4-8", "--spot", "--preemptible"], "exclude each other"),
    ("tpu_create.sh", TPU + ["--accelerator-type", "v4-8", "--queued", "--preemptible"], "not --preemptible"),
    ("tpu_create.sh", TPU + ["--accelerator-type"], "--accelerator-type needs a value"),
    ("tpu_create.sh", TPU + ["--accelerator-type", "v4-8", "--bogus"], "unknown argument: --bogus"),
    ("tpu_setup.sh", TPU, "pass --repo-url URL or --source-dir DIR"),
    ("tpu_setup.sh", TPU + ["--source-dir", "/"], "is not a vqgan_jax checkout"),
    ("tpu_run.sh", ["--name", "vqgan"] + RUN_ARGS, "--zone is required"),
    ("tpu_run.sh", TPU + ["--", "--workdir=gs://b/run"], "pass the main job's flags after --"),
    ("tpu_run.sh", TPU + ["--worker", "1"] + RUN_ARGS, "--worker goes with --logs"),
    ("tpu_tensorboard.sh", TPU, "--workdir is required"),
    ("tpu_delete.sh", TPU + ["--queued", "--stop"], "exclude each other"),
    ("slurm_submit.sh", ["--nodes", "0", "--", "--config=configs/imagenet.py"], "--nodes must be a positive"),
    ("slurm_submit.sh", [], "pass the main job's flags after --"),
    ("worker_setup.sh", ["--python", "no-such-python"], "older than 3.11"),
])
def test_bad_arguments_exit_nonzero_with_a_message(script, args, message):
  result = launch(script, "--dry-run", *args, check=False)
  assert result.returncode == 2 and result.stdout == ""
  assert message in result.stderr and "--help" in result.stderr


def test_tpu_create_prints_gcloud_create():
  base = "gcloud compute tpus tpu-vm create vqgan --zone=us-central2-b"
  assert dry_run("tpu_create.sh", *TPU, "--accelerator-type", "v4-32", "--spot") == [
      f"{base} --accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"]
  assert dry_run("tpu_create.sh", *TPU, "--accelerator-type=v6e-16", "--preemptible", "--project=p") == [
      "gcloud compute tpus tpu-vm create vqgan --zone=us-central2-b --project=p "
      "--accelerator-type=v6e-16 --version=v2-alpha-tpuv6e --preemptible"]
  assert dry_run("tpu_create.sh", *TPU, "--accelerator-type", "v7x-8", "--runtime-version", "v2-custom",
                 "--", "--network=my net") == [
      f"{base} --accelerator-type=v7x-8 --version=v2-custom '--network=my net'"]


def test_tpu_create_queued_prints_queued_resource_create():
  assert dry_run("tpu_create.sh", *TPU, "--accelerator-type", "v5litepod-64", "--queued", "--spot") == [
      "gcloud compute tpus queued-resources create vqgan --node-id=vqgan --zone=us-central2-b "
      "--accelerator-type=v5litepod-64 --runtime-version=v2-alpha-tpuv5-lite --spot"]
  assert dry_run("tpu_create.sh", *TPU, "--accelerator-type=v5p-8", "--queued")[0].endswith(
      "--runtime-version=v2-alpha-tpuv5")


def test_name_zone_and_project_come_from_the_environment():
  env = {**os.environ, "TPU_NAME": "envtpu", "TPU_ZONE": "europe-west4-a", "TPU_PROJECT": "proj"}
  assert dry_run("tpu_delete.sh", env=env) == [
      "gcloud compute tpus tpu-vm delete envtpu --zone=europe-west4-a --project=proj"]


def test_tpu_setup_clones_on_every_worker_then_installs():
  [line] = dry_run("tpu_setup.sh", *TPU, "--repo-url", "https://github.com/u/vqgan_jax.git", "--branch", "dev")
  assert line.startswith("gcloud compute tpus tpu-vm ssh vqgan --zone=us-central2-b --worker=all --command ")
  command = remote_command(line)
  assert "git clone --branch dev https://github.com/u/vqgan_jax.git vqgan_jax" in command
  assert "git -C vqgan_jax pull --ff-only" in command
  assert command.endswith("bash vqgan_jax/launch/worker_setup.sh")


def test_tpu_setup_copies_a_source_dir_to_every_worker(tmp_path):
  env = {**os.environ, "TMPDIR": str(tmp_path)}
  archive = tmp_path / "vqgan-vqgan_jax.tar.gz"
  tar, scp, rm, ssh = dry_run("tpu_setup.sh", *TPU, "--source-dir", str(REPO), env=env)
  assert shlex.split(tar)[:7] == ["tar", "-czf", str(archive), "-C", str(REPO), "--exclude=.git", "--exclude=.venv"]
  assert shlex.split(scp) == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(archive), "vqgan:vqgan_jax.tar.gz",
                              "--zone=us-central2-b", "--worker=all"]
  assert shlex.split(rm) == ["rm", str(archive)]
  assert "tar -xzf vqgan_jax.tar.gz -C vqgan_jax" in remote_command(ssh)
  assert remote_command(ssh).endswith("bash vqgan_jax/launch/worker_setup.sh")
  assert not archive.exists()  # --dry-run ran nothing.


def test_tpu_run_forwards_the_main_job_to_all_workers():
  [line] = dry_run("tpu_run.sh", *TPU, *RUN_ARGS)
  assert line.startswith("gcloud compute tpus tpu-vm ssh vqgan --zone=us-central2-b --worker=all --command ")
  command = remote_command(line)
  assert f"nohup .venv/bin/{MAIN} >> logs/main.log 2>&1 < /dev/null &" in command
  [line] = dry_run("tpu_run.sh", *TPU, "--foreground", *RUN_ARGS)
  assert "--worker=all" in line and f".venv/bin/{MAIN} 2>&1 | tee -a logs/main.log" in remote_command(line)


def test_tpu_run_logs_and_stop():
  [logs] = dry_run("tpu_run.sh", *TPU, "--logs")
  assert logs == ("gcloud compute tpus tpu-vm ssh vqgan --zone=us-central2-b --worker=0 "
                  "--command 'tail -n 200 -F vqgan_jax/logs/main.log'")
  [logs] = dry_run("tpu_run.sh", *TPU, "--logs", "--worker=all")
  assert "--worker=all" in logs and "[$(hostname)]" in remote_command(logs)
  [stop] = dry_run("tpu_run.sh", *TPU, "--stop")
  assert "--worker=all" in stop and "kill $(cat logs/main.pid)" in remote_command(stop)


def test_tpu_tensorboard_forwards_its_port():
  assert dry_run("tpu_tensorboard.sh", *TPU, "--workdir", "gs://b/run", "--port", "6007") == [
      "gcloud compute tpus tpu-vm ssh vqgan --zone=us-central2-b --worker=0 --command "
      "'cd vqgan_jax && .venv/bin/tensorboard --logdir=gs://b/run --host=localhost --port=6007' "
      "-- -L 6007:localhost:6007"]


def test_tpu_delete():
  assert dry_run("tpu_delete.sh", *TPU, "--yes") == [
      "gcloud compute tpus tpu-vm delete vqgan --zone=us-central2-b --quiet"]
  assert dry_run("tpu_delete.sh", *TPU, "--queued") == [
      "gcloud compute tpus queued-resources delete vqgan --zone=us-central2-b --force"]
  assert dry_run("tpu_delete.sh", *TPU, "--stop") == [
      "gcloud compute tpus tpu-vm stop vqgan --zone=us-central2-b"]


def test_slurm_submit_and_sbatch_script():
  [line] = dry_run("slurm_submit.sh", "--nodes", "4", "--gpus-per-node=4", "--partition", "gpu", *RUN_ARGS)
  assert shlex.split(line) == ["sbatch", "--nodes=4", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                               str(LAUNCH / "slurm_gpu.sbatch"), *RUN_ARGS[1:]]
  assert dry_run("slurm_gpu.sbatch", *RUN_ARGS[1:]) == [f"srun --kill-on-bad-exit=1 {MAIN}"]
  directives = [l for l in (LAUNCH / "slurm_gpu.sbatch").read_text().splitlines() if l.startswith("#SBATCH")]
  assert "#SBATCH --ntasks-per-node=8" in directives and "#SBATCH --gpus-per-node=8" in directives


ODD = "--config.note=it's \"a\" $HOME"  # Quotes and a $ must reach the job unchanged.


@pytest.mark.parametrize("script, args", [
    ("tpu_create.sh", TPU + ["--accelerator-type", "v4-32", "--queued", "--spot", "--", "--description=a b"]),
    ("tpu_setup.sh", TPU + ["--repo-url", "https://github.com/u/vqgan_jax.git"]),
    ("tpu_run.sh", TPU + RUN_ARGS + [ODD]),
    ("tpu_tensorboard.sh", TPU + ["--workdir", "runs/my run"]),
    ("tpu_delete.sh", TPU + ["--queued", "--yes"]),
    ("slurm_submit.sh", ["--time", "1:00:00"] + RUN_ARGS + [ODD]),
    ("slurm_gpu.sbatch", RUN_ARGS[1:] + [ODD]),
])
def test_a_real_run_executes_exactly_the_printed_commands(stubs, script, args):
  env, log = stubs
  printed = [shlex.split(line) for line in dry_run(script, *args, env=env)]
  launch(script, *args, env=env)
  assert [json.loads(line)["argv"] for line in log.read_text().splitlines()] == printed


def test_source_dir_archive_leaves_out_venv_git_and_workdirs(stubs, tmp_path):
  env, log = stubs
  src = tmp_path / "src"
  for path in ("setup.py", "vqgan_jax/main.py", "launch/worker_setup.sh", ".venv/bin/python",
               ".git/HEAD", "workdirs/tiny/events", "vqgan_jax/__pycache__/main.pyc"):
    (src / path).parent.mkdir(parents=True, exist_ok=True)
    (src / path).write_text("x")
  launch("tpu_setup.sh", *TPU, "--source-dir", str(src), env=env)
  scp, ssh = [json.loads(line) for line in log.read_text().splitlines()]
  assert sorted(p for p in scp["archive"] if not p.endswith("/")) == [
      "./launch/worker_setup.sh", "./setup.py", "./vqgan_jax/main.py"]
  assert ssh["argv"][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
  assert list(tmp_path.glob("*.tar.gz")) == []  # The local archive is removed after the copy.


def test_background_run_command_on_a_simulated_worker(tmp_path):
  """Runs the remote commands of tpu_run.sh in a fake home: start, refuse a second start, stop."""
  python = tmp_path / "vqgan_jax" / ".venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text('#!/bin/bash\necho "main got: $*"\nexec -a "$0 $*" sleep 60\n')
  python.chmod(0o755)

  def on_worker(line):
    return subprocess.run(["bash", "-c", remote_command(line)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)

  [start] = dry_run("tpu_run.sh", *TPU, *RUN_ARGS, ODD)
  [stop] = dry_run("tpu_run.sh", *TPU, "--stop")
  pid_file, log = tmp_path / "vqgan_jax/logs/main.pid", tmp_path / "vqgan_jax/logs/main.log"
  pid = None
  try:
    assert on_worker(start).returncode == 0
    pid = int(pid_file.read_text())
    _wait_for(lambda: "main got" in log.read_text())
    assert log.read_text().startswith("=== ")
    assert f"main got: -m vqgan_jax.main --config=configs/imagenet.py --workdir=gs://b/run {ODD}\n" in log.read_text()
    again = on_worker(start)
    assert again.returncode == 1 and "still running" in again.stderr
    assert "stopped" in on_worker(stop).stdout
    _wait_for(lambda: not _alive(pid))
    assert not pid_file.exists() and "not running" in on_worker(stop).stdout
  finally:
    if pid is not None and _alive(pid):
      os.kill(pid, 9)


def _wait_for(condition, seconds=10.0):
  """Polls `condition` for up to `seconds` (a bound on waiting, not a speed check)."""
  for _ in range(int(seconds / 0.05)):
    if condition():
      return
    time.sleep(0.05)
  pytest.fail(f"condition not reached within {seconds} s")


def _alive(pid):
  """Running and not a zombie (its orphan may wait unreaped when PID 1 does not reap)."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except FileNotFoundError:
    return False
  return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_worker_setup_makes_a_venv_with_jax_tpu():
  lines = dry_run("worker_setup.sh", "--python", "python3")
  assert lines[-4:] == ["python3 -m venv .venv", ".venv/bin/pip install -q -U pip",
                        ".venv/bin/pip install -q -U -e . 'jax[tpu]'",
                        ".venv/bin/python -c 'import jax, vqgan_jax; print(\"vqgan_jax installed with jax\", jax.__version__)'"]
  assert shlex.split(lines[-5]) == ["cd", str(REPO)]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_passes():
  result = subprocess.run(["shellcheck", *map(str, LAUNCH.glob("*.sh")), *map(str, LAUNCH.glob("*.sbatch"))],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 0, result.stdout
