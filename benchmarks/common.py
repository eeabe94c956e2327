"""Shared pieces of the benchmarks: the simulated server process, datasets, the product run, tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.simserver import SimParams

#: The simulated benchmarks measure the method as published: kf-instruct's wording with the paper's rules.
PAPER_SET = "kf-instruct-paper"

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "aime_2025.jsonl"


class SimServer:
    """The simulated server in its own process (it must not share the client's interpreter lock)."""

    def __init__(self, params: SimParams) -> None:
        self.params = params
        self.tmp = tempfile.TemporaryDirectory(prefix="kflow-sim-")
        port_file = Path(self.tmp.name) / "port"
        args = [sys.executable, "-m", "benchmarks.simserver", "--port-file", str(port_file)]
        for name, value in asdict(params).items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.log = Path(self.tmp.name) / "server.log"
        with self.log.open("w") as log:  # handler errors land here; `close` shows them
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the simulated server did not start")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/stats", timeout=30) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        errors = self.log.read_text(errors="replace").strip()
        if errors:
            print(f"simulated server errors:\n{errors[-4000:]}", file=sys.stderr)
        self.tmp.cleanup()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def write_dataset(folder: Path, count: int) -> tuple[Path, list[str]]:
    """`count` problems: AIME 2025 texts (cycled), each tagged "[P<i>]" for the simulated server."""
    rows = [json.loads(line) for line in SHARED.read_text().splitlines() if line.strip()]
    problems = []
    with (folder / f"problems_{count}.jsonl").open("w") as handle:
        for i in range(count):
            row = rows[i % len(rows)]
            text = f"[P{i}] {row['problem']}"
            problems.append(text)
            handle.write(json.dumps({"id": str(i), "problem": text, "answer": int(row["answer"])}) + "\n")
    return folder / f"problems_{count}.jsonl", problems


def run_product(
    base_url: str, dataset: Path, iterations: int, concurrency: int, folder: Path, **params: Any
) -> tuple[float, str]:
    """Run `kflow eval`'s engine in this process; returns (wall seconds, database path)."""
    from knowledge_flow.context import Context
    from knowledge_flow.evaluation.datasets import load_problems
    from knowledge_flow.evaluation.session import DatasetSpec, create_eval, execute
    from knowledge_flow.graph import compile_graph
    from knowledge_flow.params import resolve_params
    from knowledge_flow.persistence import SqliteCheckpointer, get_store

    db = str(folder / f"bench_{time.monotonic_ns()}.db")
    store = get_store(db)
    spec = DatasetSpec(str(dataset))
    loaded = load_problems(str(dataset))
    resolved = dict(
        resolve_params(
            {"model": "sim", "prompts": PAPER_SET, "iterations": iterations, "max_new_tokens": 100_000, **params}
        )
    )
    create_eval(
        store,
        eval_id="bench",
        spec=spec,
        dataset=loaded,
        params=resolved,
        base_url=base_url,
        concurrency=concurrency,
        output_postfix="bench",
        output_dir=str(folder / "results"),
    )
    checkpointer = SqliteCheckpointer(db)
    started = time.monotonic()
    execute(
        graph=compile_graph(checkpointer),
        store=store,
        eval_id="bench",
        context=Context(base_url=base_url, db_path=db, api_key="EMPTY"),
        concurrency=concurrency,
        stop=threading.Event(),
    )
    wall = time.monotonic() - started
    checkpointer.close()
    return wall, db


def lower_bound(stats: dict[str, Any], params: SimParams) -> float:
    """Simulated seconds no scheduler can beat: the longest problem alone, or all tokens at full rate."""
    per_problem: dict[int, int] = {}
    for request in stats["requests"]:
        per_problem[request["problem"]] = per_problem.get(request["problem"], 0) + request["tokens"]
    total = sum(per_problem.values())
    return max(max(per_problem.values()) / params.s_max, total / params.rate)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def header(name: str, params: dict[str, Any]) -> None:
    print(f"# {name}   ({datetime.now(UTC).date().isoformat()}, {machine()})")
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(c)), *(len(_fmt(r[i])) for r in rows)) for i, c in enumerate(columns)]
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(_fmt(v).ljust(w) for v, w in zip(row, widths, strict=True)) + " |")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)
