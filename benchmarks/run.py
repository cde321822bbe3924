"""Run every benchmarks/bench_*.py and print their figures as one table.

Each bench script is a standalone program that prints one JSON object per
line: {"bench": str, "metric": str, "value": number, "unit": str,
"target": optional str, "ok": optional bool}.  Other output lines are
passed through as progress.  Select scripts with BENCH=name[,name] (the part
after ``bench_``).

``make bench`` fails (exit 1) when a bench script exits non-zero, times out,
or prints a row whose ``ok`` is false (a target that was not met), so a
broken or regressed benchmark can never pass as a row in a table.  The
failures are listed after the table.
"""

import json
import os
import subprocess
import sys
import time

# BENCH_DIR lets the runner's own test point it at scripts of its own.
HERE = os.environ.get("BENCH_DIR") or os.path.dirname(os.path.abspath(__file__))
TIMEOUT_PER_SCRIPT = 1800


def discover(selected):
    names = sorted(f[len("bench_") : -3] for f in os.listdir(HERE) if f.startswith("bench_") and f.endswith(".py"))
    if selected:
        unknown = sorted(set(selected) - set(names))
        if unknown:
            sys.exit("benchmarks: no such bench: %s (have: %s)" % (", ".join(unknown), ", ".join(names)))
        names = [n for n in names if n in selected]
    return names


def run_one(name):
    rows = []
    script = os.path.join(HERE, "bench_%s.py" % name)
    print("-- bench_%s.py" % name, flush=True)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            try:
                row = json.loads(line)
            except ValueError:
                print("   " + line, flush=True)
                continue
            if isinstance(row, dict) and "metric" in row:
                rows.append(row)
                print("   %s: %s %s" % (row["metric"], _fmt(row.get("value")), row.get("unit", "")), flush=True)
        proc.wait(timeout=max(1, TIMEOUT_PER_SCRIPT - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rows.append({"bench": name, "metric": "(timed out)", "value": None, "unit": "", "failed": True})
    if proc.returncode:
        rows.append(
            {
                "bench": name,
                "metric": "(script failed, exit %s)" % proc.returncode,
                "value": None,
                "unit": "",
                "failed": True,
            }
        )
    return rows


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return "%.4g" % value
    return str(value)


def main():
    selected = [s for s in os.environ.get("BENCH", "").split(",") if s]
    all_rows = []
    for name in discover(selected):
        all_rows.extend(run_one(name))
    headers = ("bench", "metric", "value", "unit", "target", "met")
    table = [headers]
    for row in all_rows:
        met = row.get("ok")
        table.append(
            (
                str(row.get("bench", "")),
                str(row.get("metric", "")),
                _fmt(row.get("value")),
                str(row.get("unit", "")),
                str(row.get("target", "") or ""),
                "" if met is None else ("yes" if met else "NO"),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    print()
    for index, row in enumerate(table):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
    failed = failures(all_rows)
    if failed:
        print("\nbenchmarks FAILED (%d):" % len(failed))
        for row in failed:
            print("  %s: %s" % (row.get("bench", "?"), row.get("metric", "?")))
        return 1
    return 0


def failures(rows):
    """Rows that fail the run: a script that failed or timed out, or a target not met."""
    return [row for row in rows if row.get("failed") or row.get("ok") is False]


if __name__ == "__main__":
    sys.exit(main())
