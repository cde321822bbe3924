"""Run every benchmarks/bench_*.py and print their figures as one table.

Each bench script is a standalone program that prints one JSON object per
line: {"bench": str, "metric": str, "value": number, "unit": str,
"target": optional str, "ok": optional bool}.  Other output lines are
passed through as progress.  Select scripts with BENCH=name[,name] (the part
after ``bench_``).  A script that fails (a measurement broke, or it exits
non-zero because a figure missed its target) makes this runner exit 1 after
the table is printed.
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
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
        rows.append({"bench": name, "metric": "(timed out)", "value": None, "unit": ""})
    if proc.returncode:
        rows.append({"bench": name, "metric": "(script failed, exit %s)" % proc.returncode, "value": None, "unit": ""})
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
    failed = [row["bench"] for row in all_rows if str(row.get("metric", "")).startswith("(")]
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
    if failed:
        print("\nbenchmarks failed: %s" % ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
