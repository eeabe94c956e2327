"""B5: prompts stay bounded when the model changes its answer at every rollout.

Prompt tokens at each of 64 iterations against the bound: problem + summary + knowledge budget (+ the fixed
template). The knowledge list grows with every changed answer, but a prompt shows at most the budget.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import PAPER_SET, SimServer, header, table
from benchmarks.simserver import SimParams


def main(argv: list[str] | None = None) -> dict[str, float]:
    from knowledge_flow import Context, compile_graph
    from knowledge_flow.persistence import RolloutStore, SqliteCheckpointer
    from knowledge_flow.prompts import load_prompt_set
    from knowledge_flow.strategies.knowledge_flow import SPEC
    from knowledge_flow.text.tokens import estimate_tokens as count_tokens

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=64)
    parser.add_argument("--knowledge-budget", type=int, default=1024)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    words = {"summary_words": 20, "report_words": 10} if args.tiny else {}
    if args.tiny:
        args.iterations, args.knowledge_budget = 6, 60
    params = SimParams(time_scale=1e6, median_tokens=600, sigma=0.2, s_max=1e9, rate=1e12, change_every=1, **words)
    header(
        "B5 bounded prompts",
        {"iterations": args.iterations, "knowledge_budget": args.knowledge_budget, **params.__dict__},
    )
    problem = "[P5] Find the sum of all integer bases b > 9 for which 17_b is a divisor of 97_b."
    with tempfile.TemporaryDirectory() as tmp, SimServer(params) as server:
        db = Path(tmp) / "b5.db"
        checkpointer = SqliteCheckpointer(db)
        final = compile_graph(checkpointer).invoke(
            {
                "problem": problem,
                "iterations": args.iterations,
                "model": "sim",
                "prompts": PAPER_SET,
                "knowledge_budget_tokens": args.knowledge_budget,
            },
            {"configurable": {"thread_id": "b5"}},
            context=Context(base_url=server.base_url, db_path=str(db)),
        )
        checkpointer.close()
        store = RolloutStore(db)
        rows = [(row.iteration, row.prompt_json, row.summary) for row in store.rollouts(final["run_id"])]
        store.close()
    empty = {"problem": "", "answer_slot": "<integer>", "iteration": 1, "reference": "", "knowledge": []}
    template = count_tokens(load_prompt_set("kf-instruct").table(SPEC).render("later", **empty))
    longest_summary = max(count_tokens(summary or "") for _, _, summary in rows)
    # each shown item also carries its numbering and labels: counted in the list's budget by `visible_items`
    bound = count_tokens(problem) + longest_summary + args.knowledge_budget + template
    figures = []
    for iteration, prompt_json, _ in rows:
        text = json.loads(prompt_json)[0]["content"]
        shown = text.count("Wrong answer:")
        figures.append((iteration, count_tokens(text), shown))
    marks = sorted({0, 1, 2, 4, 8, 16, 32, args.iterations - 1} & {f[0] for f in figures})
    table(
        ["iteration", "prompt tokens", "items shown", "bound"], [[i, t, s, bound] for i, t, s in figures if i in marks]
    )
    peak = max(t for _, t, _ in figures)
    print(f"knowledge record: {len(final['knowledge'])} items; peak prompt {peak} tokens; bound {bound}")
    print(f"target: every prompt <= bound -> {'met' if peak <= bound else 'MISSED'}")
    return {"peak": float(peak), "bound": float(bound), "record": float(len(final["knowledge"]))}


if __name__ == "__main__":
    main()
