"""The README's Python tour must run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_running_docs_toml_example_is_a_valid_job(tmp_path):
    """docs/running.md's TOML example reads into a valid JobConfig, and every name in it
    (attack, aggregator) is one the job accepts."""
    from asyndbt_jax.attacks import ATTACKS
    from asyndbt_jax.engine import AGGREGATORS
    from asyndbt_jax.job import JobConfig, read_config_file

    doc = README.parent / "docs" / "running.md"
    (block,) = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
    (tmp_path / "job.toml").write_text(block)
    cfg = JobConfig(**read_config_file(str(tmp_path / "job.toml")))
    assert cfg.fields == "question,sentence" and cfg.label_words == "no=No,yes=Yes" and cfg.malicious == 1
    assert cfg.attack in ATTACKS and cfg.aggregator in AGGREGATORS
