"""README opens with the two commands, and CI runs exactly the second one."""
import re

from tests.helpers import REPO


def _readme_commands():
  return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)[:2]


def test_readme_opens_with_main_job_and_test_commands():
  run, test = _readme_commands()
  assert "python -m vqgan_jax.main --config=configs/tiny.py" in run
  assert "pip install" in run and "pytest" in test


def test_ci_runs_the_readme_test_command():
  _, test = _readme_commands()
  assert test in (REPO / ".ci" / "run").read_text()
