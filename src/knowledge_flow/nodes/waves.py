"""One wave of streamed traces (strategies that stream, e.g. deepconf): the order in which its traces finish,
and the stop policy checked as each one finishes.

- Finishing order: every streamed trace gets the next place in its run's order (``finish_order``, 0-based over
  the whole run), whether it finished, failed, was stopped below the threshold or was cancelled.
- Consensus per trace (stop policy ``consensus:TAU[:N]``, waves the strategy marks `Streaming.per_trace`):
  each time a trace finishes, its vote joins the counted traces of the earlier waves and of this wave, in
  finishing order; once the leading answer holds TAU of the vote (weighted as the final-answer rule weighs
  it), the wave's streams still running are closed (each at its next token), and every trace that ends
  after that point, cut or not, is stored with stop reason ``consensus_cancelled`` and does not vote. A trace
  not yet sent (llama.cpp's server gets one stream at a time) is stored without being sent. The run then
  stops at `stop_check`, whose vote over the same counted traces is the one that reached the consensus.
- A trace budget below one confidence window (`note_inactive_filter`): nothing can be stopped; said once per
  process on stderr (the `knowledge_flow` logger), and `figures.deepconf_traces` reports it for the run.

After a crash in the middle of a wave, the traces of the wave already stored count again (parsed from their
stored text), so a resumed wave reaches the same decision.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import func, select

from knowledge_flow.endpoint import Completion, Prepared
from knowledge_flow.endpoint.stream import PositionHook
from knowledge_flow.persistence.store import RolloutRow, RolloutStore
from knowledge_flow.records import AnswerType, RunParams, TraceVote
from knowledge_flow.strategies import Step, Strategy, Streaming
from knowledge_flow.strategies.confidence import Measure, WindowMonitor, below_threshold
from knowledge_flow.strategies.policies import Consensus, consensus_reached, parse_stop_policy, vote_measure
from knowledge_flow.text.parsing import parse_rollout

STOPPED = "gconf_threshold"
CONSENSUS_CANCELLED = "consensus_cancelled"
#: The `usage_source` of a trace never sent.
NOT_SENT = "not-sent"

log = logging.getLogger("knowledge_flow")
_NOTED: set[tuple[str, int, int]] = set()
_NOTED_LOCK = threading.Lock()


@dataclass
class Wave:
    """What the streams of one wave share (thread-safe)."""

    iteration: int
    threshold: float | None
    consensus: Consensus | None
    measure: Measure | None
    answer_type: AnswerType
    parse: Callable[[str, str | None], str | None]
    """The answer of a trace's text (and reasoning)."""
    votes: list[TraceVote]
    """The counted traces so far, in finishing order."""
    next_order: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    reached: threading.Event = field(default_factory=threading.Event)

    def hook(self, monitor: WindowMonitor) -> PositionHook:
        """A stream's position hook: stop below the threshold, or once the consensus is reached."""
        return lambda tops: self.reached.is_set() or monitor.push(tops)

    def settle(
        self,
        rollout_id: str,
        completion: Completion | None,
        error: str | None,
        text: str,
        found: Mapping[str, float] | None,
        stopped: bool,
    ) -> tuple[str | None, int]:
        """(stop reason, finishing order) of a trace that ended: `stopped` below the threshold by its monitor,
        closed once the consensus was reached, or finished (it then votes, unless it failed or finished after
        the consensus)."""
        counted = error is None and completion is not None and not completion.cancelled
        vote = TraceVote(
            rollout_id=rollout_id,
            iteration=self.iteration,
            answer=self.parse(text, completion.reasoning) if counted and completion is not None else None,
            measures=dict(found) if found else None,
            counted=counted and not below_threshold(found, self.threshold),
        )
        with self.lock:
            order = self.next_order
            self.next_order += 1
            if stopped:
                return STOPPED, order
            if self.reached.is_set() or (completion is not None and completion.cancelled):
                return CONSENSUS_CANCELLED, order
            self.votes.append(vote)
            if self.consensus is not None and consensus_reached(
                self.consensus, self.votes, self.answer_type, self.measure
            ):
                self.reached.set()
        return None, order


def finish_orders_so_far(store: RolloutStore, run_id: str) -> int:
    """The next place in the run's finishing order."""
    with store.session() as session:
        last = session.scalar(select(func.max(RolloutRow.finish_order)).where(RolloutRow.run_id == run_id))
    return 0 if last is None else int(last) + 1


def open_wave(store: RolloutStore, strategy: Strategy, step: Step, streaming: Streaming, ids: list[str]) -> Wave:
    """The wave of rollouts `ids`, with the counted traces of the earlier waves and those of this wave already
    stored (a wave resumed after a crash)."""
    state, params = step.state, step.params
    rules = step.rules
    answer_type = params["answer_type"]
    sections, report = strategy.section_names(rules), strategy.report_section(rules)

    def parse(text: str, reasoning: str | None) -> str | None:
        return parse_rollout(text, reasoning, answer_type, sections, report).answer

    policy = parse_stop_policy(params["stop_policy"])
    consensus = policy if isinstance(policy, Consensus) and streaming.per_trace else None
    votes = [vote for vote in state.get("traces", []) if vote["counted"]]
    stored = [row for row in store.iteration_rollouts(state["run_id"], state.get("iteration", 0)) if row.id in ids]
    for row in sorted(stored, key=lambda r: (r.finish_order is None, r.finish_order or 0)):
        if row.error is None and row.stop_reason is None and not below_threshold(row.measures, streaming.threshold):
            votes.append(
                TraceVote(
                    rollout_id=row.id,
                    iteration=row.iteration,
                    answer=parse(row.text_to_parse(), row.reasoning),
                    measures=row.measures,
                    counted=True,
                )
            )
    wave = Wave(
        iteration=state.get("iteration", 0),
        threshold=streaming.threshold,
        consensus=consensus,
        measure=vote_measure(params["final_answer_rule"]),
        answer_type=answer_type,
        parse=parse,
        votes=votes,
        next_order=finish_orders_so_far(store, state["run_id"]),
    )
    if consensus is not None and stored and consensus_reached(consensus, votes, answer_type, wave.measure):
        wave.reached.set()
    return wave


def text_of(prepared: Prepared, completion: Completion) -> str:
    """A streamed output as its answer is read (a prefill continued as the assistant's message first)."""
    return (prepared.prefill or "") + completion.content if prepared.path == "chat-continue" else completion.content


def unsent(temperature: float) -> Completion:
    """A trace never sent: the consensus was reached before its turn."""
    return Completion("", None, "cancelled", 0, 0, 0.0, temperature=temperature, cancelled=True, usage_source=NOT_SENT)


def note_inactive_filter(prepared: Prepared, streaming: Streaming, params: RunParams) -> None:
    """Say once (per process, model, window and requested budget) that the budget sent is below one
    confidence window: the online filter cannot stop anything and ``lowest`` is the trace's mean."""
    if prepared.max_tokens >= streaming.window:
        return
    key = (params["model"], streaming.window, prepared.requested)
    with _NOTED_LOCK:
        if key in _NOTED:
            return
        _NOTED.add(key)
    log.warning(
        f"online filter inactive: traces get at most {prepared.max_tokens} tokens (max_new_tokens "
        f"{params['max_new_tokens']} x the prompt set's fraction, fitted to the served context), less than one "
        f"confidence window of {streaming.window}: nothing can be stopped and `lowest` is a trace's mean. Raise "
        "--max-new-tokens or lower --confidence-window."
    )


__all__ = [
    "CONSENSUS_CANCELLED",
    "NOT_SENT",
    "STOPPED",
    "Wave",
    "note_inactive_filter",
    "open_wave",
    "text_of",
    "unsent",
]
