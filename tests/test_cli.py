import json
import subprocess
import sys

import asyndbt_jax
from asyndbt_jax.cli import main


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "asyndbt_jax.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and asyndbt_jax.__version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "asyndbt_jax.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: asyndbt" in out.stdout


def test_info_prints_json(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    import jax

    assert info["asyndbt_jax"] == asyndbt_jax.__version__ and info["backend"] == jax.default_backend()
