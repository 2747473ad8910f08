"""benchmarks/aggregators.py --quick --json runs and prints the fields docs quote."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "aggregators.py"
RULES = [
    "mean",
    "coordinate_median",
    "trimmed_mean",
    "geometric_median",
    "krum",
    "multi_krum",
    "centered_clipping",
    "sign_consensus",
]
FIELDS = ["jax_s", "numpy_s", "memory_pass_s", "ratio_vs_numpy", "ratio_vs_memory_pass"]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_json_has_every_rule_ratio_and_target():
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["benchmark"] == "aggregators"
    assert out["machine"]["jax_version"] and out["machine"]["device"]
    sizes = [s["key"] for s in out["sizes"]]
    assert sizes == ["R=200,D=500", "R=1000,D=500"]
    assert sorted(out["results"]) == sorted(RULES)
    for rule in RULES:
        for size in sizes:
            row = out["results"][rule][size]
            for field in FIELDS:
                assert _positive(row[field]), (rule, size, field, row[field])
            assert math.isclose(row["ratio_vs_numpy"], row["numpy_s"] / row["jax_s"])
            assert math.isclose(row["ratio_vs_memory_pass"], row["jax_s"] / row["memory_pass_s"])
            # Same work on both sides: the NumPy reference reproduces the JAX aggregate.
            assert row["matches_numpy"], (rule, size, row["max_abs_diff"])
            assert math.isfinite(row["max_abs_diff"]) and row["max_abs_diff"] >= 0
    targets = {(t["rule"], t["metric"]) for t in out["targets"]}
    assert targets == {
        ("coordinate_median", "ratio_vs_memory_pass"),
        ("trimmed_mean", "ratio_vs_memory_pass"),
        ("geometric_median", "ratio_vs_numpy"),
    }
    for target in out["targets"]:
        assert isinstance(target["met"], bool) and _positive(target["value"])
        assert target["size"] in sizes
    assert out["all_targets_met"] == all(t["met"] for t in out["targets"])
