"""Accuracy per token on a real local model: strategies side by side on the same GSM8K problems.

Every strategy runs through the product (`kflow eval`'s engine: one thread per problem, the rollout store,
the graders) against a llama.cpp server this command starts with a packaged model (or `--base-url`), on
the same problems at matched rollouts (N per problem):

- one rollout: pass@1 of rollout 0 of the self-consistency run;
- self-consistency@N (majority vote) — the baseline every row is paired with;
- knowledge-flow@N as published (kf-instruct's wording with the paper's rules), final answer `last` and
  `majority:all`, both read from the same run (re-graded, no second run);
- knowledge-flow@N with the guard (kf-instruct as shipped), `last` and `majority:all`;
- parallel thinkers: knowledge-flow with 2 thinkers x N/2 iterations (the guard's rules);
- RSA (`rsa`): a population of 4 aggregating K = 2 traces per member, N/4 loops (N = 8: 4 independent traces,
  then one loop of 4 aggregations), final answer the majority of the last population; `rsa-genselect` the same
  with the final answer chosen by one GenSelect call among the last population (its majority is read from the
  same run too);
- with `--variants`, the guard's parts one by one (see VARIANTS).

Printed: accuracy with its 95% Wilson interval, wins/losses against self-consistency on the same problems with
the exact McNemar p-value, tokens per problem (prompt + completion), right->wrong and wrong->right flips
between consecutive iterations, pass@1 per iteration, and the seconds the server spent on each run (requests
sent together counted once).

Runs are kept in a database (`--db`): a configuration that already ran (same model, problems, sizes, prompt
set text) is read back instead of run again, and an interrupted one continues where it stopped.

    python -m benchmarks.accuracy                      # 15 problems x 4 rollouts, sc, kf, kf-guard (see DEFAULTS)
    python -m benchmarks.accuracy --problems 30 --variants sc,kf,kf-tie   # the figures of docs/accuracy.md
    python -m benchmarks.accuracy --limit 5            # a quick look: the first 5 problems
    python -m benchmarks.accuracy --tiny               # the test suite's run: 0.5B, 2 problems, 2 rollouts
    python -m benchmarks.accuracy --stored             # run nothing: the stored runs, on the problems all finished
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, header, table

DATASET = ROOT.parent / "shared" / "datasets" / "gsm8k_dev.jsonl"

#: One hour on two idle cores: the 1.5B model writes about 320 tokens per GSM8K rollout at about 20 tokens/s
#: (17-34 s per rollout measured, idle to busy), so 15 problems x 4 rollouts x 3 variants is about 50 minutes.
#: The figures of docs/accuracy.md use --problems 30 (twice the power, twice the time).
DEFAULTS: dict[str, Any] = {
    "model": "qwen2.5-coder-1.5b",
    "problems": 15,
    "offset": 0,
    "iterations": 4,
    "max_new_tokens": 512,
    "temperature": 0.6,
    "top_p": 0.95,
}
TINY: dict[str, Any] = {
    "model": "qwen2.5-coder-0.5b",
    "problems": 2,
    "offset": 0,
    "iterations": 2,
    "max_new_tokens": 40,
    "temperature": 0.6,
    "top_p": 0.95,
}


@dataclass(frozen=True)
class Variant:
    """One product run: a strategy with its options and prompt set (a built-in one, or kf-instruct-paper with
    some knowledge-flow rules changed); and the final-answer rules it is reported under."""

    name: str
    label: str
    strategy: str = "knowledge-flow"
    prompts: str = "kf-instruct"
    rules: dict[str, Any] | None = None
    """Rules set on top of kf-instruct-paper (the paper's rules), for measuring the guard's parts one by one."""
    options: dict[str, Any] = field(default_factory=dict)
    finals: tuple[str | None, ...] = ("last", "majority:all")
    """How the run is reported: final-answer rules re-graded from its stored answers, or None for the final
    answer the run itself chose (a rule that makes a call, e.g. genselect); the last one is the run's own rule."""
    thinkers: int = 1
    shown: dict[str | None, str] = field(default_factory=lambda: dict(FINAL_LABELS))
    """How each entry of `finals` is named in the table."""


FINAL_LABELS: dict[str | None, str] = {"last": "last", "majority:all": "majority", None: "its own final answer"}
RSA_LABELS: dict[str | None, str] = {"last": "majority of the last population", None: "GenSelect"}
RSA_OPTIONS: dict[str, Any] = {"aggregation_size": 2}

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("sc", "self-consistency", strategy="self-consistency", finals=("majority:all",)),
        Variant("kf", "knowledge-flow (paper)", prompts="kf-instruct-paper"),
        Variant("kf-guard", "knowledge-flow + guard"),
        Variant("thinkers", "knowledge-flow + guard, 2 thinkers", thinkers=2),
        Variant(
            "rsa", "RSA N=4 K=2", strategy="rsa", thinkers=4, options=RSA_OPTIONS, finals=("last",), shown=RSA_LABELS
        ),
        Variant(
            "rsa-genselect",
            "RSA N=4 K=2 + GenSelect",
            strategy="rsa",
            thinkers=4,
            options={**RSA_OPTIONS, "final_answer_rule": "genselect"},
            finals=("last", None),
            shown=RSA_LABELS,
        ),
        # the guard's parts, for measuring each (paper rules plus one change)
        Variant("kf-plurality", "kf: plurality reference", rules={"reference_rule": "plurality"}),
        Variant("kf-outvoted", "kf: outvoted list", rules={"list_rule": "outvoted"}),
        Variant(
            "kf-agree",
            "kf: plurality + outvoted",
            rules={"reference_rule": "plurality", "list_rule": "outvoted"},
        ),
        Variant(
            "kf-tie",
            "kf: plurality + outvoted + tie->independent",
            rules={"reference_rule": "plurality", "list_rule": "outvoted", "independent_on_tie": True},
        ),
        Variant(
            "kf-confirm",
            "kf: plurality + outvoted + reference after 2 votes",
            rules={"reference_rule": "plurality", "list_rule": "outvoted", "reference_min_votes": 2},
        ),
        Variant("kf-alternate", "kf: every 2nd rollout independent", rules={"independent_every": 2}),
    )
}
DEFAULT_VARIANTS = ("sc", "kf", "kf-guard")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def dataset_slice(folder: Path, offset: int, count: int) -> Path:
    """The problems offset .. offset+count-1 of the GSM8K sample, as their own JSONL file."""
    lines = [line for line in DATASET.read_text(encoding="utf-8").splitlines() if line.strip()]
    chosen = lines[offset : offset + count]
    if len(chosen) < count:
        raise SystemExit(f"{DATASET} has {len(lines)} problems; offset {offset} + {count} is past its end")
    path = folder / f"gsm8k_{offset}_{offset + count}.jsonl"
    path.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return path


def prompt_set_with_rules(folder: Path, name: str, rules: dict[str, Any]) -> Path:
    """kf-instruct-paper's text with `rules` set in its top-level [rules] table (a set of its own name)."""
    from knowledge_flow.prompts import load_prompt_set
    from knowledge_flow.prompts.sets import with_rules

    text = with_rules(load_prompt_set("kf-instruct-paper").source, f"kf-instruct-{name}", rules=rules)
    path = folder / f"kf-instruct-{name}.toml"
    path.write_text(text, encoding="utf-8")
    load_prompt_set(str(path))  # checked now, not halfway through a run
    return path


def run_variant(
    variant: Variant,
    *,
    store_path: Path,
    folder: Path,
    dataset: Path,
    endpoint: Callable[[], str],
    model: str,
    sizes: dict[str, Any],
    fresh: bool,
    say: Any,
    stored: bool = False,
) -> str:
    """Run (or read back, or continue) one variant; returns its evaluation id. With `stored`, nothing runs: the
    run is read as the database holds it, finished or not."""
    from knowledge_flow.context import Context
    from knowledge_flow.evaluation.datasets import load_problems
    from knowledge_flow.evaluation.rows import EvalStore
    from knowledge_flow.evaluation.session import DatasetSpec, create_eval, execute
    from knowledge_flow.graph import compile_graph
    from knowledge_flow.params import resolve_params
    from knowledge_flow.persistence import SqliteCheckpointer, get_store

    prompts = variant.prompts
    if variant.rules is not None:
        prompts = str(prompt_set_with_rules(folder, variant.name, variant.rules))
    iterations = sizes["iterations"] // variant.thinkers
    final = "majority:all" if variant.strategy == "self-consistency" else variant.finals[-1]
    params = dict(
        resolve_params(
            {
                "model": model,
                "strategy": variant.strategy,
                "iterations": iterations,
                "thinkers": variant.thinkers,
                "max_new_tokens": sizes["max_new_tokens"],
                "temperature": sizes["temperature"],
                "top_p": sizes["top_p"],
                "answer_type": "integer",
                "prompts": prompts,
                **({"final_answer_rule": final} if final is not None else {}),
                **variant.options,
            }
        )
    )
    loaded = load_problems(str(dataset))
    fingerprint = {k: v for k, v in params.items() if k != "prompts"} | {"dataset": loaded.content_hash}
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    eval_id = f"{variant.name}-{digest}" + (f"-{int(time.time())}" if fresh else "")
    store = get_store(store_path)
    row = EvalStore(store).get_eval(eval_id)
    if row is not None and row.status == "done":
        say(f"{variant.name}: reusing finished run {eval_id}")
        return eval_id
    if stored:
        if row is None:
            raise SystemExit(f"{variant.name}: no run {eval_id} in {store_path}; run it first (without --stored)")
        say(f"{variant.name}: reading run {eval_id} as stored ({row.status})")
        return eval_id
    base_url = endpoint()  # the server starts for the first run that needs it
    if row is None:
        create_eval(
            store,
            eval_id=eval_id,
            spec=DatasetSpec(str(dataset)),
            dataset=loaded,
            params=params,
            base_url=base_url,
            concurrency=1,
            output_postfix=variant.name,
            output_dir=str(folder / "results"),
        )
    say(f"{variant.name}: running {eval_id} ({len(loaded.problems)} problems x {sizes['iterations']} rollouts)")
    checkpointer = SqliteCheckpointer(store_path)
    started = time.monotonic()
    try:
        # one problem at a time: llama.cpp serves one request at a time and reuses the prompt prefix of the
        # previous request, which consecutive rollouts of one problem share
        execute(
            graph=compile_graph(checkpointer),
            store=store,
            eval_id=eval_id,
            context=Context(base_url=base_url, db_path=str(store_path), api_key="EMPTY", request_timeout=1800.0),
            concurrency=1,
            stop=threading.Event(),
        )
    finally:
        checkpointer.close()
    say(f"{variant.name}: {time.monotonic() - started:.0f} s")
    return eval_id


def busy_seconds(spans: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals: time covered by one or more of them, counted once."""
    total, reached = 0.0, float("-inf")
    for start, end in sorted(spans):
        total += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    return total


def server_seconds(store: Any, items: list[Any], problems: set[str]) -> float:
    """Seconds the server spent on a run's requests (rollouts and calls) for `problems`, given the run's stored
    items: the union of the requests' intervals, so that requests sent together (a population, parallel
    thinkers), which the server queues, are counted once."""
    spans = []
    for item in items:
        if item.run_id and str(item.problem_id) in problems:
            for row in [*store.rollouts(item.run_id), *store.calls(item.run_id)]:
                end = datetime.fromisoformat(row.created_at).timestamp()
                spans.append((end - row.latency_s, end))
    return busy_seconds(spans)


def on_common_problems(records: list[Any]) -> list[Any]:
    """Each run cut to the problems that every run finished, so that all rows count the same problems (a run
    read with --stored may not have finished them all)."""
    from knowledge_flow.evaluation.compare import RunRecords

    common = set.intersection(*({p.problem_id for p in run.problems} for run in records)) if records else set()
    return [RunRecords(run.label, [p for p in run.problems if p.problem_id in common]) for run in records]


def figures(store: Any, runs: dict[str, str], rollouts: int) -> list[dict[str, Any]]:
    """The comparison rows: one per (run, final-answer rule), paired with self-consistency, over the problems
    that every run finished."""
    from knowledge_flow.evaluation.compare import RunRecords, compare_runs, first_rollout, records_from_items
    from knowledge_flow.evaluation.rows import EvalStore

    records: list[RunRecords] = []
    labels: list[tuple[str, str, str, float]] = []
    """Per row: variant, final-answer rule, evaluation id, and the share of the run's server time it shows."""
    items_of = {eval_id: list(EvalStore(store).eval_items(eval_id)) for eval_id in runs.values()}
    for name, eval_id in runs.items():
        variant = VARIANTS[name]
        items = items_of[eval_id]
        if variant.strategy == "self-consistency":
            sc = records_from_items(f"self-consistency, majority of {rollouts}", items, final_rule="majority:all")
            records[:0] = [sc, first_rollout("one rollout (rollout 0)", sc)]
            labels[:0] = [(name, "majority:all", eval_id, 1.0), (name, "rollout 0", eval_id, 1 / max(1, rollouts))]
            continue
        for rule in variant.finals:
            label = f"{variant.label}, {variant.shown[rule]}"
            records.append(records_from_items(label, items, final_rule=rule))
            labels.append((name, rule or "its own", eval_id, 1.0))
    records = on_common_problems(records)
    problems = {p.problem_id for p in records[0].problems} if records else set()
    seconds = {eval_id: server_seconds(store, items, problems) for eval_id, items in items_of.items()}
    baseline = 0 if "sc" in runs else None
    compared = compare_runs(records, baseline if baseline is not None else 0)
    rows = []
    for comparison, (name, rule, eval_id, share) in zip(compared, labels, strict=True):
        entry = comparison.to_json()
        entry |= {"variant": name, "final_rule": rule, "server_seconds": round(seconds[eval_id] * share, 1)}
        if baseline is None:
            entry["paired"] = None
        rows.append(entry)
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    columns = [
        "strategy",
        "accuracy",
        "95% CI",
        "vs SC W/L",
        "McNemar p",
        "tokens/problem (prompt+completion)",
        "r->w",
        "w->r",
        "pass@1 by iteration",
        "server s",
    ]
    body = []
    for r in rows:
        paired = r["paired"]
        low, high = r["interval"]
        body.append(
            [
                r["label"],
                f"{100 * r['accuracy']:.1f}% ({r['correct']}/{r['problems']})",
                f"{100 * low:.0f}-{100 * high:.0f}%",
                f"{paired['wins']}/{paired['losses']}" if paired else "—",
                f"{paired['p_value']:.3f}" if paired else "—",
                f"{r['tokens_per_problem']:,.0f} ({r['prompt_tokens_per_problem']:,.0f}+"
                f"{r['completion_tokens_per_problem']:,.0f})",
                str(r["right_to_wrong"]),
                str(r["wrong_to_right"]),
                " / ".join(f"{100 * a:.0f}" for a in r["pass_at_1"]),
                f"{r['server_seconds']:,.0f}",
            ]
        )
    table(columns, body)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"packaged model (default {DEFAULTS['model']})")
    parser.add_argument("--problems", type=int, help=f"problems (default {DEFAULTS['problems']})")
    parser.add_argument("--offset", type=int, help="first problem of the GSM8K sample (default 0)")
    parser.add_argument("--limit", type=int, help="a quick look: only the first K of those problems")
    parser.add_argument("--iterations", type=int, help=f"rollouts per problem, N (default {DEFAULTS['iterations']})")
    parser.add_argument("--max-new-tokens", type=int, help=f"per rollout (default {DEFAULTS['max_new_tokens']})")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument("--db", help="database of the runs (default: KFLOW_CACHE/benchmarks/accuracy.db)")
    parser.add_argument("--base-url", help="use this running endpoint instead of starting a llama.cpp server")
    parser.add_argument("--served-model", help="with --base-url: the model name to send")
    parser.add_argument(
        "--threads", type=int, help="llama.cpp threads (default: all cores; 1 holds up better on a busy machine)"
    )
    parser.add_argument("--fresh", action="store_true", help="run every variant again instead of reusing runs")
    parser.add_argument(
        "--stored",
        action="store_true",
        help="run nothing: report the runs in --db as they are, over the problems every run has finished",
    )
    parser.add_argument("--json", dest="json_path", help="also write the figures to this file")
    parser.add_argument("--tiny", action="store_true", help="the test suite's run (0.5B, 2 problems, 2 rollouts)")
    args = parser.parse_args(argv)

    from knowledge_flow.persistence import get_store
    from knowledge_flow.server_launch.local import start_local
    from knowledge_flow.server_launch.model_files import cache_dir, packaged_model
    from knowledge_flow.server_launch.process import ServerProcess

    sizes = dict(TINY if args.tiny else DEFAULTS)
    for key in ("model", "problems", "offset", "iterations", "max_new_tokens", "temperature", "top_p"):
        value = getattr(args, key)
        if value is not None:
            sizes[key] = value
    if args.limit is not None:
        sizes["problems"] = min(sizes["problems"], args.limit)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    if args.tiny and args.variants == ",".join(DEFAULT_VARIANTS):
        names = ["sc", "kf", "kf-guard"]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    uneven = [n for n in names if VARIANTS[n].thinkers > 1 and sizes["iterations"] % VARIANTS[n].thinkers]
    if uneven:
        raise SystemExit(f"{', '.join(uneven)}: the rollouts per problem must be a multiple of the thinkers")

    store_path = (
        Path(args.db) if args.db else cache_dir() / "benchmarks" / ("accuracy-tiny.db" if args.tiny else "accuracy.db")
    )
    store_path.parent.mkdir(parents=True, exist_ok=True)
    folder = store_path.parent / "accuracy-files"
    folder.mkdir(parents=True, exist_ok=True)
    dataset = dataset_slice(folder, sizes["offset"], sizes["problems"])
    header("accuracy per token", {**sizes, "variants": ",".join(names), "db": store_path})

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    servers: list[ServerProcess] = []
    model = (args.served_model or sizes["model"]) if args.base_url else packaged_model(sizes["model"]).served_name

    def endpoint() -> str:
        if args.base_url:
            return str(args.base_url)
        if not servers:
            servers.append(
                start_local(
                    model=sizes["model"], port=free_port(), threads=args.threads, write_pid_file=False, progress=say
                )
            )
            if servers[0].model != model:
                raise SystemExit(f"the server reports model {servers[0].model!r}, expected {model!r}")
        return servers[0].base_url

    started = time.monotonic()
    try:
        runs = {
            name: run_variant(
                VARIANTS[name],
                store_path=store_path,
                folder=folder,
                dataset=dataset,
                endpoint=endpoint,
                model=model,
                sizes=sizes,
                fresh=args.fresh,
                say=say,
                stored=args.stored,
            )
            for name in names
        }
    finally:
        for server in servers:
            server.stop()
    wall = time.monotonic() - started
    store = get_store(store_path)
    rows = figures(store, runs, sizes["iterations"])
    print(f"model {model}; problems {sizes['offset']}..{sizes['offset'] + sizes['problems'] - 1} of {DATASET.name}")
    if rows and rows[0]["problems"] < sizes["problems"]:
        done = rows[0]["problems"]
        print(f"every run has finished {done} of the {sizes['problems']} problems: each row counts those {done}")
    print_rows(rows)
    print(f"wall time of this invocation: {wall:,.0f} s (runs already in {store_path} are read back, not timed)")
    result = {"sizes": sizes, "model": model, "runs": runs, "rows": rows, "wall_s": wall}
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
