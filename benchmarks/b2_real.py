"""B2-real: no barrier against the barrier loop, on the real vLLM CPU server (the packaged 0.5B model).

B2 (`b2_barrier`) measures the claim on a simulated server; this measures it on vLLM itself, with real
completion lengths. Both loops run the product's own graph with the same options, the same seed per rollout
(rollout k of every problem is sampled with seed + 1024 k) and the same problems:

- no barrier: `kflow eval`'s engine, every problem its own thread, all in flight, each running its rollouts
  back to back;
- barrier: the loop of the original scripts, expressed with the same graph: every problem's rollout k, wait
  for all of them, then rollout k + 1 (the graph is stepped one rollout at a time, `interrupt_after`).

Each loop is timed from its first request to its last response; throughput is completion tokens per second.
The two loops' completions are the same only while vLLM's sampling is the same in different batches, which the
CPU build does not promise: the tokens of each loop are reported next to its time. Each server setting gets
its own server: vLLM's automatic prefix caching on and off (every rollout's prompt repeats the problem, and a
problem's prompts share a prefix); the prefix cache is emptied before each run (`/reset_prefix_cache`), so the
second loop does not find the first one's prompts there.

    KFLOW_VLLM_PYTHON=.venv-vllm/bin/python .venv/bin/python -m benchmarks.b2_real   # 8 problems x 3
    ... -m benchmarks.b2_real --problems 12 --iterations 4 --max-new-tokens 512        # larger
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import PAPER_SET, ROOT, header, run_product, table

DATASET = ROOT.parent / "shared" / "datasets" / "gsm8k_dev.jsonl"
PACKAGED_MODEL, SERVED = "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct"
SETTINGS = {"on": "--enable-prefix-caching", "off": "--no-enable-prefix-caching"}


@dataclass(frozen=True)
class Measured:
    loop: str
    wall_s: float
    rollouts: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def completion_rate(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def kflow(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knowledge_flow", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


class VllmServer:
    """`kflow serve vllm` with the packaged model, as the real-vLLM test lane starts it, and prefix caching
    `on` or `off`; the dev endpoints are on for `/reset_prefix_cache`."""

    def __init__(self, python: str, prefix_caching: str, max_model_len: int) -> None:
        self.port = free_port()
        args = ["serve", "vllm", "--model", PACKAGED_MODEL, "--enforce-eager", "--python", python]
        args += ["--port", str(self.port), "--max-model-len", str(max_model_len), "--ready-timeout", "900"]
        args += ["--env", "VLLM_CPU_KVCACHE_SPACE=1", "--env", "VLLM_SERVER_DEV_MODE=1"]
        args += ["--extra-arg", SETTINGS[prefix_caching]]
        started = kflow(*args, timeout=1100)
        if started.returncode != 0:
            raise RuntimeError(f"kflow serve vllm failed:\n{started.stderr[-3000:]}")
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"

    def reset_prefix_cache(self) -> None:
        request = urllib.request.Request(f"{self.root}/reset_prefix_cache", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    def close(self) -> None:
        kflow("serve", "stop", "--port", str(self.port), timeout=120)


def load_rows(count: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in DATASET.read_text().splitlines() if line.strip()]
    return rows[:count]


def totals(db: str, loop: str, wall: float) -> Measured:
    from knowledge_flow.persistence import get_store

    store = get_store(db)
    rows = [row for run in store.list_runs() for row in store.rollouts(run.run_id)]
    failed = [row.error for row in rows if row.error]
    if failed:
        raise RuntimeError(f"{loop}: {len(failed)} rollouts failed, e.g. {failed[0]}")
    prompt = sum(row.prompt_tokens for row in rows)
    completion = sum(row.completion_tokens for row in rows)
    return Measured(loop, wall, len(rows), prompt, completion)


def no_barrier(base_url: str, rows: list[dict[str, Any]], iterations: int, folder: Path, **params: Any) -> Measured:
    dataset = folder / "problems.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    wall, db = run_product(base_url, dataset, iterations, len(rows), folder, **params)
    return totals(db, "no barrier (kflow eval)", wall)


def barrier(base_url: str, rows: list[dict[str, Any]], iterations: int, folder: Path, **params: Any) -> Measured:
    """The same graph, one rollout per problem per step, all problems' rollout k before any rollout k + 1."""
    from knowledge_flow.context import Context
    from knowledge_flow.graph import builder
    from knowledge_flow.persistence import SqliteCheckpointer, get_store

    db = str(folder / f"barrier_{time.monotonic_ns()}.db")
    get_store(db)
    checkpointer = SqliteCheckpointer(db)
    graph = builder.compile(checkpointer=checkpointer, interrupt_after=["distill_knowledge"])
    context = Context(base_url=base_url, db_path=db, api_key="EMPTY")
    run_params = {"prompts": PAPER_SET, "iterations": iterations, **params}

    def step(index: int, k: int) -> None:
        config: Any = {"configurable": {"thread_id": f"barrier-{index}"}}
        graph_input = {"problem": rows[index]["problem"], **run_params} if k == 0 else None
        graph.invoke(graph_input, config, context=context, durability="sync")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(rows)) as pool:
        for k in range(iterations):
            list(pool.map(lambda i, k=k: step(i, k), range(len(rows))))  # the barrier
    wall = time.monotonic() - started
    checkpointer.close()
    return totals(db, "barrier (original scripts' loop)", wall)


def compare_loops(
    base_url: str,
    rows: list[dict[str, Any]],
    iterations: int,
    params: dict[str, Any],
    *,
    reset: Any = None,
    barrier_first: bool = False,
) -> list[Measured]:
    """Both loops on one server, one after the other (the prefix cache emptied before each by `reset`)."""
    loops = [barrier, no_barrier] if barrier_first else [no_barrier, barrier]
    measured = {}
    for loop in loops:
        if reset is not None:
            reset()
        with tempfile.TemporaryDirectory(prefix="kflow-b2real-") as tmp:
            found = loop(base_url, rows, iterations, Path(tmp), **dict(params))
        measured[found.loop] = found
        print(f"  {found.loop}: {found.wall_s:.1f} s, {found.completion_tokens:,} completion tokens", flush=True)
    return sorted(measured.values(), key=lambda m: m.loop != "no barrier (kflow eval)")


def rows_of(setting: str, results: list[Measured]) -> list[list[object]]:
    ours, theirs = results
    speedup = theirs.wall_s / ours.wall_s if ours.wall_s else 0.0
    return [
        [
            *(setting, m.loop, m.rollouts, f"{m.wall_s:.1f}", f"{m.prompt_tokens:,}", f"{m.completion_tokens:,}"),
            *(f"{m.completion_rate:.1f}", f"{speedup:.2f}x" if m is ours else "1.00x"),
        ]
        for m in (ours, theirs)
    ]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prefix-caching", choices=["both", "on", "off"], default="both")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--python", default=os.environ.get("KFLOW_VLLM_PYTHON"), help="interpreter with vLLM")
    args = parser.parse_args(argv)
    if not args.python:
        parser.error("give --python or set KFLOW_VLLM_PYTHON (the interpreter with vLLM)")
    params = {"model": SERVED, "max_new_tokens": args.max_new_tokens, "seed": args.seed, "temperature": 0.6}
    rows = load_rows(args.problems)
    header(
        "B2-real: no barrier vs barrier loop on vLLM (CPU build)",
        {"problems": len(rows), "iterations": args.iterations, "dataset": DATASET.name, **params},
    )
    print(f"load average (1/5/15 min) at start: {load()}", flush=True)
    table_rows: list[list[object]] = []
    speedups: dict[str, float] = {}
    settings = ["on", "off"] if args.prefix_caching == "both" else [args.prefix_caching]
    for number, setting in enumerate(settings):
        started = time.monotonic()
        server = VllmServer(args.python, setting, args.max_model_len)
        print(f"prefix caching {setting}: server up in {time.monotonic() - started:.0f} s", flush=True)
        try:
            server.reset_prefix_cache()
            with tempfile.TemporaryDirectory(prefix="kflow-b2real-warm-") as tmp:  # load and warm the engine
                no_barrier(server.base_url, rows[:1], 1, Path(tmp), **{**params, "max_new_tokens": 16})
            results = compare_loops(
                server.base_url,
                rows,
                args.iterations,
                params,
                reset=server.reset_prefix_cache,
                barrier_first=number % 2 == 1,  # alternate the order: a drift of the machine's load hits both
            )
        finally:
            server.close()
        table_rows += rows_of(setting, results)
        speedups[f"speedup_prefix_{setting}"] = results[1].wall_s / results[0].wall_s
        print(f"load average after: {load()}", flush=True)
    table(
        ["prefix caching", "loop", "rollouts", "wall s", "prompt tok", "completion tok", "completion tok/s", "speedup"],
        table_rows,
    )
    for name, value in speedups.items():
        print(f"{name}: {value:.2f}x (barrier wall time / no-barrier wall time)")
    return speedups


if __name__ == "__main__":
    main()
