"""benchmarks/report.py merges the .partN files of a stopped robustness --jobs run into one
table, whether or not each part's own rows are complete."""

import json
import subprocess
import sys
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "benchmarks" / "report.py"


def _part(path, aggregator, complete, accuracy):
    row = {"0.0": 0.9, "0.1": 0.9, "0.2": 0.9, "0.3": accuracy}
    path.write_text(json.dumps({"benchmark": "robustness", "complete": complete,
                                "results": {"sign_flip": {aggregator: row}}}))


def test_parts_of_one_run_render_as_one_table(tmp_path):
    a, b = tmp_path / "r.json.part0", tmp_path / "r.json.part1"
    _part(a, "mean", True, 0.7)  # this part finished its rows; the other did not
    _part(b, "krum", False, 0.85)
    out = subprocess.run([sys.executable, str(REPORT), str(a), str(b)], capture_output=True, text=True, check=True).stdout
    assert out.count("From `") == 1
    header = next(line for line in out.splitlines() if line.startswith("| attack"))
    assert header == "| attack | mean | krum |"
    assert "| sign_flip | 70.0 (+20.0) | 85.0 (+5.0) |" in out
