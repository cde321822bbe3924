"""benchmarks/run.py: a failed bench script or a missed target fails `make bench`."""

import os
import subprocess
import sys

import pytest

RUNNER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks", "run.py"
)

GOOD = 'import json\nprint(json.dumps({"bench": "good", "metric": "m", "value": 1, "unit": "s", "ok": True}))\n'
MISSED = 'import json\nprint(json.dumps({"bench": "missed", "metric": "p99", "value": 9, "unit": "ms", "ok": False}))\n'
CRASHED = (
    'import json, sys\nprint(json.dumps({"bench": "crashed", "metric": "m", "value": 1, "unit": "s"}))\nsys.exit(3)\n'
)


def run(tmp_path, scripts, selected):
    for name, body in scripts.items():
        (tmp_path / ("bench_%s.py" % name)).write_text(body)
    env = dict(os.environ, BENCH_DIR=str(tmp_path), BENCH=selected)
    return subprocess.run([sys.executable, RUNNER], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "selected, code, says",
    [
        ("good", 0, None),
        ("good,missed", 1, "missed: p99"),
        ("good,crashed", 1, "crashed: (script failed, exit 3)"),
    ],
)
def test_runner_exit_code_reflects_failures(tmp_path, selected, code, says):
    proc = run(tmp_path, {"good": GOOD, "missed": MISSED, "crashed": CRASHED}, selected)
    assert proc.returncode == code, proc.stdout + proc.stderr
    if says:
        assert "benchmarks FAILED" in proc.stdout
        assert says in proc.stdout
    else:
        assert "FAILED" not in proc.stdout
