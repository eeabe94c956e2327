"""B4: the product's own cost per graph step, with a server that answers at once.

Milliseconds of wall time per graph step for 1, 8, 64 and 256 threads (problems in flight) on this machine,
and where the time goes (cProfile of one thread's graph run, top functions by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
from pathlib import Path

from benchmarks.common import PAPER_SET, SimServer, header, run_product, table, write_dataset
from benchmarks.simserver import SimParams

STEPS_PER_ROLLOUT = 4  # solve, extract_answer, distill_knowledge, stop_check


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--rollouts", type=int, default=512, help="rollouts per measurement (split over threads)")
    parser.add_argument("--profile", action="store_true", default=True)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    if args.tiny:
        args.threads, args.rollouts, args.profile = [1, 4], 16, False
    # a server with no latency worth the name: a million simulated seconds per real second, short replies
    params = SimParams(time_scale=1e6, median_tokens=200, sigma=0.1, s_max=1e9, rate=1e12)
    header("B4 per-step overhead", {"threads": args.threads, "rollouts": args.rollouts, **params.__dict__})
    rows = []
    figures: dict[str, float] = {}
    profile_text = ""
    with tempfile.TemporaryDirectory() as tmp, SimServer(params) as server:
        for threads in args.threads:
            iterations = max(1, args.rollouts // threads)
            dataset, _ = write_dataset(Path(tmp), threads)
            wall, _ = run_product(server.base_url, dataset, iterations, threads, Path(tmp))
            steps = threads * iterations * STEPS_PER_ROLLOUT + threads  # + one `prepare` per thread
            per_step = 1000 * wall / steps
            per_rollout = 1000 * wall / (threads * iterations)
            figures[f"ms_per_step_{threads}"] = per_step
            rows.append([threads, threads * iterations, steps, wall, per_step, per_rollout])
        if args.profile:
            profile_text = profile_one_thread(server.base_url, Path(tmp), 64)
    table(["threads", "rollouts", "graph steps", "wall (s)", "ms per step", "ms per rollout"], rows)
    if profile_text:
        print("\nprofile (one thread, 64 rollouts, by own time):")
        print("\n".join(profile_text.splitlines()[:40]))
    return figures


def profile_one_thread(base_url: str, folder: Path, iterations: int) -> str:
    """cProfile sees only its own thread: profile a graph run in this one."""
    from knowledge_flow import Context, compile_graph
    from knowledge_flow.persistence import SqliteCheckpointer

    db = folder / "profile.db"
    checkpointer = SqliteCheckpointer(db)
    graph = compile_graph(checkpointer)
    profiler = cProfile.Profile()
    profiler.enable()
    graph.invoke(
        {"problem": "[P0] profile", "iterations": iterations, "model": "sim", "prompts": PAPER_SET},
        {"configurable": {"thread_id": "profile"}},
        context=Context(base_url=base_url, db_path=str(db)),
    )
    profiler.disable()
    checkpointer.close()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(25)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
