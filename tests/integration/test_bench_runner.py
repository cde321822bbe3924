"""benchmarks/run.py: a failed bench script or a missed target fails `make bench`."""

import json
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
    return subprocess.run([sys.executable, RUNNER], env=env, capture_output=True, text=True, timeout=60, check=False)


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


def test_role_bench_declares_the_issue_15_ratio_targets(capsys):
    """bench_role's ratios on the 10-host lab carry their targets; a missed one is a row that fails the run."""
    sys.path.insert(0, os.path.dirname(RUNNER))
    try:
        import bench_role
    finally:
        sys.path.pop(0)
    assert bench_role.TARGET_SIZE == 10
    assert bench_role.TARGETS == {"idempotent": 3.0, "first": 10.0, "wake": 1.5}
    bench_role.ratio("idempotent run / ping", 10, 3.4, "idempotent")
    bench_role.ratio("wake (awake hosts) / ping", 10, 1.2, "wake")
    bench_role.ratio("idempotent run / ping", 3, 9.0, "idempotent")  # other sizes: a figure, no target
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row.get("ok") for row in rows] == [False, True, None]
    assert rows[0]["target"] == "<= 3"
