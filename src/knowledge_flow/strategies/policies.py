"""Stop policies and label-free final-answer rules.

Stop policies: ``fixed`` runs the whole iteration budget (the paper's setting); ``stable:K`` stops once the
last K iterations gave the same answer and wrote no error report; ``consensus:TAU[:N]`` stops once at least N
traces (default 2) can vote and the leading answer holds at least TAU (0 < TAU <= 1) of the vote: DeepConf's
adaptive sampling (TAU = 0.95 in the paper). The vote is the final-answer rule's: weighted by its confidence
measure for ``conf-vote``, one vote per trace otherwise; traces kept out of votes (failed, cancelled, below
the online threshold) do not count.

Final-answer rules: ``last`` (the last iteration's answer), ``majority:W`` (the most frequent answer among
the last W iterations, ``all`` for every iteration; ties go to the answer given most recently),
``conf-vote:MEASURE[:ETA]`` (DeepConf's vote over every trace of the run, all thinkers included: each
counted trace adds its MEASURE, one of ``lowest``, ``bottom10``, ``tail``, ``mean``, to its answer; with ETA
only the top ETA percent most confident traces vote; ties go to the answer given most recently) and
``majority-traces`` (one vote per counted trace, ties to the answer voted first: the reference DeepConf
implementation's reported ``final_answer``). Traces without measures cannot be weighted: when no trace has
them, ``conf-vote`` is a plain majority over the counted traces. The two trace rules need the run's trace
record: without one (`traces` None) they refuse (`MissingTraces`) rather than vote over something else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from knowledge_flow.records import AnswerType, TraceVote
from knowledge_flow.strategies.confidence import MEASURES, Measure, keep_top, share_of_leader
from knowledge_flow.text.answers import normalize

CONF_VOTE = "conf-vote"
CONSENSUS = "consensus"
DEFAULT_CONSENSUS_MIN = 2


@dataclass(frozen=True)
class ConfVote:
    measure: Measure
    eta: float | None
    """Percent of the most confident traces that vote (None: all)."""


@dataclass(frozen=True)
class TraceMajority:
    """``majority-traces``: one vote per counted trace."""


TRACE_MAJORITY = "majority-traces"


class MissingTraces(ValueError):
    """A trace rule was asked for an answer without the traces it votes over."""


@dataclass(frozen=True)
class Consensus:
    tau: float
    min_traces: int


def parse_stop_policy(policy: str) -> int | Consensus | None:
    """None for ``fixed``, K for ``stable:K``, a `Consensus` for ``consensus:TAU[:N]``."""
    if policy == "fixed":
        return None
    name, _, value = policy.partition(":")
    if name == "stable" and value.isdigit() and int(value) >= 1:
        return int(value)
    if name == CONSENSUS:
        tau_text, _, count_text = value.partition(":")
        try:
            tau = float(tau_text)
        except ValueError:
            tau = math.nan
        count = int(count_text) if count_text.isdigit() else (DEFAULT_CONSENSUS_MIN if not count_text else 0)
        if 0.0 < tau <= 1.0 and count >= 1:
            return Consensus(tau, count)
    raise ValueError(
        f"stop policy must be 'fixed', 'stable:K' with K >= 1 or 'consensus:TAU[:N]' with 0 < TAU <= 1 and "
        f"N >= 1, got {policy!r}"
    )


def parse_final_answer_rule(rule: str) -> int | ConfVote | TraceMajority | None:
    """0 for ``last``, W for ``majority:W``, None for ``majority:all``, a `ConfVote` for ``conf-vote:...``, a
    `TraceMajority` for ``majority-traces``."""
    if rule == "last":
        return 0
    if rule == TRACE_MAJORITY:
        return TraceMajority()
    name, _, value = rule.partition(":")
    if name == "majority" and value == "all":
        return None
    if name == "majority" and value.isdigit() and int(value) >= 1:
        return int(value)
    if name == CONF_VOTE:
        measure, _, eta_text = value.partition(":")
        eta: float | None = None
        if eta_text:
            try:
                eta = float(eta_text)
            except ValueError:
                eta = math.nan
        if measure in MEASURES and (eta is None or 0.0 < eta <= 100.0):
            return ConfVote(measure, eta)
    raise ValueError(
        "final answer rule must be 'last', 'majority:W' (W >= 1 or 'all'), 'conf-vote:MEASURE[:ETA]' "
        f"(MEASURE one of {', '.join(MEASURES)}; 0 < ETA <= 100) or '{TRACE_MAJORITY}', got {rule!r}"
    )


def votes_traces(final_answer_rule: str) -> bool:
    """Whether the final-answer rule votes over every trace (not over the iterations' answers)."""
    return isinstance(parse_final_answer_rule(final_answer_rule), ConfVote | TraceMajority)


def uses_traces(stop_policy: str, final_answer_rule: str) -> bool:
    """Whether a run needs its trace record (`State.traces`)."""
    return isinstance(parse_stop_policy(stop_policy), Consensus) or votes_traces(final_answer_rule)


def vote_measure(final_answer_rule: str) -> Measure | None:
    """The measure the final-answer rule weighs votes by (None: one vote per trace)."""
    rule = parse_final_answer_rule(final_answer_rule)
    return rule.measure if isinstance(rule, ConfVote) else None


def consensus_reached(
    consensus: Consensus, traces: Sequence[TraceVote], answer_type: AnswerType, measure: Measure | None
) -> bool:
    """Whether at least `min_traces` counted traces vote and the leading answer holds `tau` of the vote."""
    totals, _, _ = trace_tally(traces, answer_type, measure)
    voters = sum(1 for t in traces if t["counted"] and normalize(t["answer"], answer_type) is not None)
    return voters >= consensus.min_traces and share_of_leader(totals) >= consensus.tau


def trace_tally(
    traces: Sequence[TraceVote], answer_type: AnswerType, measure: Measure | None, eta: float | None = None
) -> tuple[dict[str, float], dict[str, int], dict[str, str]]:
    """(weight, latest position, an original spelling) per normalised answer over the counted traces.
    Weighted by `measure` when every counted trace with an answer has it, else one vote each."""
    voters = [t for t in traces if t["counted"] and normalize(t["answer"], answer_type) is not None]
    weighted = measure is not None and bool(voters) and all(t["measures"] for t in voters)
    weights = [float((t["measures"] or {})[measure]) if weighted and measure else 1.0 for t in voters]
    if weighted and eta is not None:
        kept = keep_top(weights, eta)
        voters = [t for t, keep in zip(voters, kept, strict=True) if keep]
        weights = [w for w, keep in zip(weights, kept, strict=True) if keep]
    totals: dict[str, float] = {}
    latest: dict[str, int] = {}
    original: dict[str, str] = {}
    for position, (trace, weight) in enumerate(zip(voters, weights, strict=True)):
        key = normalize(trace["answer"], answer_type)
        assert key is not None and trace["answer"] is not None
        totals[key] = totals.get(key, 0.0) + weight
        latest[key] = position
        original[key] = trace["answer"]
    return totals, latest, original


def should_stop(
    policy: str,
    iterations: int,
    answers: Sequence[str | None],
    changed_with_report: Sequence[bool],
    answer_type: AnswerType,
    traces: Sequence[TraceVote] = (),
    final_answer_rule: str = "last",
) -> bool:
    if len(answers) >= iterations:
        return True
    parsed = parse_stop_policy(policy)
    if parsed is None:
        return False
    if isinstance(parsed, Consensus):
        return consensus_reached(parsed, traces, answer_type, vote_measure(final_answer_rule))
    k = parsed
    if len(answers) < k:
        return False
    last = [normalize(a, answer_type) for a in answers[-k:]]
    return last[0] is not None and all(a == last[0] for a in last) and not any(changed_with_report[-k:])


def final_answer(
    rule: str, answers: Sequence[str | None], answer_type: AnswerType, traces: Sequence[TraceVote] | None = None
) -> str | None:
    window = parse_final_answer_rule(rule)
    if isinstance(window, ConfVote | TraceMajority) and traces is None:
        raise MissingTraces(f"the final-answer rule {rule} votes over every trace: it needs the run's traces")
    if isinstance(window, TraceMajority):
        assert traces is not None
        totals, _, original = trace_tally(traces, answer_type, None)
        # ties go to the answer voted first (the reference's Counter.most_common); dicts keep first insertion
        return original[max(totals, key=lambda key: totals[key])] if totals else None
    if isinstance(window, ConfVote):
        assert traces is not None
        totals, latest, original = trace_tally(traces, answer_type, window.measure, window.eta)
        if not totals:
            return None
        return original[max(totals, key=lambda key: (totals[key], latest[key]))]
    if window == 0:
        return answers[-1] if answers else None
    considered = list(answers if window is None else answers[-window:])
    counts: dict[str, int] = {}
    latest_at: dict[str, int] = {}
    spelled: dict[str, str] = {}
    for position, answer in enumerate(considered):
        key = normalize(answer, answer_type)
        if key is None or answer is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        latest_at[key] = position
        spelled[key] = answer
    if not counts:
        return None
    best = max(counts, key=lambda key: (counts[key], latest_at[key]))
    return spelled[best]
