"""B7: workers sharing one evaluation. One `kflow eval` worker on SQLite against 1, 2 and 4 workers on one
PostgreSQL database (separate processes claiming problems, as on separate nodes).

A server that answers at once (the simulated server with a clock a million times fast), so the figures are the
product's own cost: rollouts per second while the workers run, CPU milliseconds the workers spend per graph step
(the graph-step overhead: parsing, storing, checkpointing, claiming; each worker's start-up and final report,
measured with a worker that finds nothing to claim, taken out), and each worker's share of the rollouts.
Every configuration also checks that each problem was finished once and no rollout was requested twice.
PostgreSQL is a cluster started for the run with its default, durable settings (every commit flushed), on the
same machine (or `--postgres URL`: a database whose server may create others); SQLite runs as always (WAL,
synchronous=NORMAL).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import PAPER_SET, ROOT, SimServer, header, table, write_dataset
from benchmarks.simserver import SimParams

STEPS_PER_ROLLOUT = 4  # solve, extract_answer, distill_knowledge, stop_check (+ one prepare per problem)
EVAL_ID = "b7"


def create(db: str, dataset: Path, iterations: int, base_url: str, folder: Path) -> None:
    """The evaluation, as `kflow eval --dataset` creates it (the workers then only resume it)."""
    from knowledge_flow.evaluation.datasets import load_problems
    from knowledge_flow.evaluation.session import DatasetSpec, create_eval
    from knowledge_flow.params import resolve_params
    from knowledge_flow.persistence import get_store

    params = resolve_params({"model": "sim", "prompts": PAPER_SET, "iterations": iterations, "max_new_tokens": 100_000})
    create_eval(
        get_store(db),
        eval_id=EVAL_ID,
        spec=DatasetSpec(str(dataset)),
        dataset=load_problems(str(dataset)),
        params=dict(params),
        base_url=base_url,
        concurrency=32,
        output_postfix="b7",
        output_dir=str(folder / "results"),
    )


def run_workers(db: str, base_url: str, workers: int, concurrency: int) -> tuple[float, float]:
    """Start the workers at once and wait for all; (wall seconds, CPU seconds of the workers)."""
    command = [sys.executable, "-m", "knowledge_flow", "eval", "--resume", EVAL_ID, "--db", db, "--base-url",
               base_url, "--concurrency", str(concurrency), "--progress-every", "3600", "--json"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    procs = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    cpu = 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        errors = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed ({proc.returncode}): {errors[-2000:]}")
    return time.monotonic() - started, cpu


def figures(db: str) -> dict[str, Any]:
    """From the database: the span in which rollouts were stored, rollouts per worker, problems done."""
    from sqlalchemy import func, select

    from knowledge_flow.evaluation.rows import EvalItemRow
    from knowledge_flow.persistence import get_store
    from knowledge_flow.persistence.rows import RolloutRow

    store = get_store(db)
    with store.session() as session:
        times = [datetime.fromisoformat(t) for t in session.scalars(select(RolloutRow.created_at))]
        shares = dict(session.execute(select(RolloutRow.worker, func.count()).group_by(RolloutRow.worker)).all())
        pairs = session.execute(select(func.count(func.distinct(RolloutRow.id)))).scalar_one()
        statuses = dict(session.execute(select(EvalItemRow.status, func.count()).group_by(EvalItemRow.status)).all())
    span = (max(times) - min(times)).total_seconds() if times else 0.0
    return {"span": span, "rollouts": len(times), "distinct": pairs, "shares": shares, "statuses": statuses}


def measure(
    store: str, db: str, workers: int, server: SimServer, dataset: Path, problems: int, iterations: int, folder: Path
) -> dict[str, Any]:
    before = len(server.stats()["requests"])
    create(db, dataset, iterations, server.base_url, folder)
    wall, cpu = run_workers(db, server.base_url, workers, 32)
    found = figures(db)
    _, idle = run_workers(db, server.base_url, 1, 32)  # a worker with nothing to claim: start-up and the end
    requested = len(server.stats()["requests"]) - before
    expected = problems * iterations
    if found["statuses"] != {"done": problems} or found["rollouts"] != expected or requested != expected:
        raise RuntimeError(f"{store} x {workers}: {found['statuses']}, {found['rollouts']} stored, {requested} sent")
    steps = expected * STEPS_PER_ROLLOUT + problems
    shares = sorted(found["shares"].values(), reverse=True)
    return {
        "store": store,
        "workers": workers,
        "wall": wall,
        "span": found["span"],
        "rollouts_per_s": expected / found["span"] if found["span"] else 0.0,
        "cpu_ms_per_step": 1000 * max(0.0, cpu - workers * idle) / steps,
        "startup_cpu_s": idle,
        "shares": [round(100 * share / expected, 1) for share in shares],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="PostgreSQL worker counts")
    parser.add_argument("--postgres", help="a PostgreSQL URL whose server may create databases (default: own)")
    parser.add_argument("--tiny", action="store_true", help="a few seconds, for the test suite")
    args = parser.parse_args(argv)
    if args.tiny:
        args.problems, args.iterations, args.workers = 12, 2, [1, 2]
    params = SimParams(time_scale=1e6, median_tokens=200, sigma=0.1, s_max=1e9, rate=1e12)
    header("B7 workers", {"problems": args.problems, "iterations": args.iterations, "workers": args.workers})
    cluster = None
    if args.postgres is None:
        from tests.support.postgres import PostgresCluster, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("B7 needs PostgreSQL's server programs (apt-get install postgresql) or --postgres URL")
        cluster = PostgresCluster(bindir, durable=True).start()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, SimServer(params) as server:
            folder = Path(tmp)
            dataset, _ = write_dataset(folder, args.problems)
            sqlite = str(folder / "b7.db")
            rows.append(measure("SQLite", sqlite, 1, server, dataset, args.problems, args.iterations, folder))
            for workers in args.workers:
                db = new_database(cluster, args.postgres, workers)
                rows.append(measure("PostgreSQL", db, workers, server, dataset, args.problems, args.iterations, folder))
    finally:
        if cluster is not None:
            cluster.stop()
    columns = ["store", "workers", "wall (s)", "rollouts stored in (s)", "rollouts / s", "CPU ms / graph step"]
    keys = ["store", "workers", "wall", "span", "rollouts_per_s", "cpu_ms_per_step", "startup_cpu_s", "shares"]
    table([*columns, "start-up CPU (s)", "shares (%)"], [[r[key] for key in keys] for r in rows])
    print("every problem finished once; every rollout requested once")
    return {"rows": rows}


def new_database(cluster: Any, given: str | None, workers: int) -> str:
    """A fresh database per configuration (the tables start empty each time)."""
    if cluster is not None:
        return str(cluster.create_database(f"b7_{workers}"))
    assert given is not None
    import psycopg

    name = f"kflow_b7_{os.getpid()}_{workers}"
    with psycopg.connect(given, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = given.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


if __name__ == "__main__":
    main()
