"""B2: no barrier against the barrier loop of the original scripts, on the same length draws.

The baseline, written here, does what the original scripts do: rollout k for every problem, wait for all of
them, then rollout k+1 (with the same Knowledge Flow prompts, built from each problem's previous reply). Both
runs see identical lengths: the simulated server draws them per (problem, iteration). Targets: at least 1.5x
faster for 30 problems (the server is not saturated); never slower for 500 (saturated).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import PAPER_SET, SimServer, header, run_product, table, write_dataset
from benchmarks.simserver import SimParams
from knowledge_flow.prompts import load_prompt_set
from knowledge_flow.strategies.knowledge_flow import SPEC
from knowledge_flow.text.parsing import parse_rollout


def barrier_loop(base_url: str, problems: list[str], iterations: int) -> float:
    """The original scripts' loop; returns wall seconds."""
    summaries: list[str | None] = [None] * len(problems)
    table = load_prompt_set(PAPER_SET).table(SPEC)  # the product's wording, the paper's rules
    started = time.monotonic()
    with httpx.Client(timeout=None, limits=httpx.Limits(max_connections=len(problems) + 8)) as client:

        def one(index: int, k: int) -> None:
            text = table.render(
                "first" if k == 0 else "later",
                problem=problems[index],
                answer_slot="<integer>",
                iteration=k,
                reference=summaries[index],
                knowledge=[],
            )
            body = {"model": "sim", "messages": [{"role": "user", "content": text}], "temperature": 0.6}
            for attempt in range(3):  # as the OpenAI client the original scripts use: retry a dropped connection
                try:
                    reply = client.post(f"{base_url}/chat/completions", json=body).json()
                    break
                except httpx.TransportError:
                    if attempt == 2:
                        raise
            summaries[index] = parse_rollout(reply["choices"][0]["message"]["content"], None, "integer").summary

        with ThreadPoolExecutor(max_workers=len(problems)) as pool:
            for k in range(iterations):
                list(pool.map(lambda i, k=k: one(i, k), range(len(problems))))  # the barrier
    return time.monotonic() - started


def drawn_tokens(stats: dict[str, Any]) -> int:
    """Tokens of the distinct (problem, iteration) draws (a retried request draws the same length again)."""
    draws = {(r["problem"], r["iteration"]): r["tokens"] for r in stats["requests"]}
    return sum(draws.values())


def compare(problems: int, iterations: int, params: SimParams) -> list[object]:
    with tempfile.TemporaryDirectory() as tmp:
        dataset, texts = write_dataset(Path(tmp), problems)
        with SimServer(params) as server:
            ours, _ = run_product(server.base_url, dataset, iterations, problems, Path(tmp))
            ours_tokens = drawn_tokens(server.stats())
        with SimServer(params) as server:
            barrier = barrier_loop(server.base_url, texts, iterations)
            barrier_tokens = drawn_tokens(server.stats())
    assert ours_tokens == barrier_tokens, "both runs must replay the same draws"
    return [problems, iterations, ours_tokens, barrier * params.time_scale, ours * params.time_scale, barrier / ours]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--large-iterations", type=int, default=4, help="iterations for the 500-problem case")
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--large-time-scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a few seconds, for the test suite")
    args = parser.parse_args(argv)
    sizes = [(30, args.iterations, args.time_scale), (500, args.large_iterations, args.large_time_scale)]
    if args.tiny:
        sizes = [(4, 2, 100.0)]
    defaults = {k: v for k, v in SimParams().__dict__.items() if k not in ("seed", "time_scale")}
    header(
        "B2 no barrier vs barrier loop",
        {"sizes (problems, iterations, time scale)": sizes, "seed": args.seed, **defaults},
    )
    rows = [compare(n, k, SimParams(time_scale=scale, seed=args.seed)) for n, k, scale in sizes]
    table(["problems", "iterations", "tokens", "barrier loop (sim s)", "knowledge-flow (sim s)", "speedup"], rows)
    speedups = {f"speedup_{row[0]}": float(row[-1]) for row in rows}  # type: ignore[arg-type]
    if not args.tiny:
        print(
            f"target 30 problems >= 1.5x: {'met' if speedups['speedup_30'] >= 1.5 else 'MISSED'}; "
            f"500 problems >= 1.0x: {'met' if speedups['speedup_500'] >= 1.0 else 'MISSED'}"
        )
    return speedups


if __name__ == "__main__":
    main()
