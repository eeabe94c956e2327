"""What `kflow show` prints of a run's strategy figures (`knowledge_flow.figures.run_figures`): TRT's rounds,
RSA's loops, DeepConf's stops and GenSelect's final-answer call."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from knowledge_flow.cli.common import clean, out, table


def print_figures(figures: dict[str, Any]) -> None:
    """TRT's rounds (strategies, selected answer and how it was selected, agreement, reflection or manager call)
    and DeepConf's stops, when the run has them."""
    trt = figures.get("trt")
    if trt is not None:
        rounds = table("round", "thinker strategies -> answers", "selected", "by", "agreement", "reflection after")
        for entry in trt["rounds"]:
            tried = "; ".join(
                f"{clean(t['key_technique'] or 'own approach', 40)} -> {clean(t['answer'], 20)}"
                for t in entry["thinkers"]
            )
            reflection = entry["reflection_after"]
            kept = " (previous best kept)" if entry.get("kept_previous") else ""
            rounds.add_row(
                str(entry["round"]),
                Text(tried),
                Text(clean(entry["selected_answer"], 30) + kept),
                Text(clean(entry.get("rule") or "—", 40)),
                f"{100 * entry['agreement']:.0f}%",
                Text(clean(describe_call(reflection), 90)),
            )
        out.print(rounds)
    rsa = figures.get("rsa")
    if rsa is not None:
        print_loops(rsa)
    if figures.get("final_select") is not None:
        print_final_select(figures["final_select"])
    deepconf = figures.get("deepconf")
    if deepconf is not None:
        tokens = deepconf["tokens"]
        threshold = deepconf["threshold"]
        out.print(
            Text(
                f"DeepConf: threshold {'—' if threshold is None else f'{threshold:.4f}'} "
                f"(window {deepconf['window']}, keep {deepconf['keep_percent']}%), online filter "
                f"{deepconf['online_filter']}; {deepconf['traces']} of {deepconf['budget']} traces, "
                f"{deepconf['stopped']} stopped ({tokens['paid_by_stopped']:,} tokens paid), "
                f"{deepconf['consensus_cancelled']} cancelled at consensus ({tokens['paid_by_cancelled']:,} tokens "
                f"paid), {deepconf['below_threshold']} below the threshold, {deepconf['counted']} voted; saved about "
                f"{tokens['saved_by_stops_estimate']:,} tokens by stops and {tokens['saved_by_consensus_estimate']:,} "
                f"by early consensus; vote share of the leader {100 * deepconf['vote']['leader_share']:.0f}%"
                + counted_by_client(tokens)
            )
        )


def print_loops(rsa: dict[str, Any]) -> None:
    """RSA's loops: the answers of each population, its majority and the agreement with it; the final call."""
    loops = table("loop", "aggregating", "answers (members)", "majority", "by", "agreement")
    for entry in rsa["loops"]:
        counts: dict[str, int] = {}
        for member in entry["members"]:
            shown = "failed" if member["error"] else clean(member["answer"], 20) if member["answer"] else "none"
            counts[shown] = counts.get(shown, 0) + 1
        aggregating = max((len(member["aggregated"]) for member in entry["members"]), default=0)
        loops.add_row(
            str(entry["loop"]),
            f"{aggregating} each" if aggregating else "independent",
            Text(", ".join(f"{answer} x{count}" for answer, count in counts.items())),
            Text(clean(entry["majority"], 30)),
            Text(clean(entry["rule"] or "—", 40)),
            f"{100 * entry['agreement']:.0f}%",
        )
    out.print(loops)


def print_final_select(call: dict[str, Any]) -> None:
    """GenSelect's final-answer call: the trace it chose and its answer, or why it chose none."""
    from knowledge_flow.figures import position

    outcome = call.get("outcome") or {}
    chosen = outcome.get("rollout_id")
    picked = f"trace {position(chosen)}" if chosen else "no trace (the pool's plurality stands)"
    why = call["error"] or outcome.get("error")
    line = f"final answer by GenSelect: {picked}, answer {clean(outcome.get('answer'))}"
    out.print(Text(line + (f"; {clean(why, 80)}" if why else "")))


def counted_by_client(tokens: dict[str, Any]) -> str:
    """A note on the tokens of closed streams, counted up to the last chunk read (the server may have
    generated a few more before it saw the close)."""
    counted = int(tokens.get("counted_by_client") or 0)
    return f"; {counted:,} tokens of closed streams counted up to the last chunk read" if counted else ""


def describe_call(call: dict[str, Any] | None) -> str:
    if call is None:
        return "—"
    if call.get("error"):
        return f"failed: {call['error']}"
    outcome = call.get("outcome") or {}
    parts = []
    if outcome.get("strategies"):
        parts.append("next: " + ", ".join(str(s.get("key_technique")) for s in outcome["strategies"]))
    if outcome.get("added"):
        parts.append(f"added {str(outcome['added']).splitlines()[0]}")
    if outcome.get("disabled"):
        parts.append(f"disabled item {outcome['disabled']}")
    if outcome.get("note"):
        parts.append(str(outcome["note"]))
    return "; ".join(parts) or "no change"
