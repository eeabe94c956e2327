"""B6: how fast `kflow` answers `--help` and a bad argument (it must not load LangGraph, the endpoint client or
the database layer for that). Prints the median of several runs of each, in seconds."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from benchmarks.common import header, table

CASES = {
    "kflow --help": ["--help"],
    "kflow solve --help": ["solve", "--help"],
    "kflow solve (bad option value)": ["solve", "x", "--iterations", "0"],
    "kflow eval (no dataset)": ["eval"],
}


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "knowledge_flow", *args], capture_output=True, check=False)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    runs = 2 if args.tiny else args.runs
    header("B6 command-line start", {"runs": runs})
    figures = {name: statistics.median(timed(case) for _ in range(runs)) for name, case in CASES.items()}
    table(["command", "median seconds"], [[name, f"{value:.3f}"] for name, value in figures.items()])
    slowest = max(figures.values())
    print(f"target: every case well under 0.5 s -> {'met' if slowest < 0.5 else 'MISSED'} (slowest {slowest:.3f} s)")
    return figures


if __name__ == "__main__":
    main()
