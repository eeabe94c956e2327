"""A scripted model for population runs (RSA, GenSelect): every reply is a trace with an id of its own
(``Trace T<n>``), so the traces a prompt aggregates, and the loop it belongs to, can be read from the
request log."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.scripted_server import Reply, Request, ScriptedServer

TRACE = re.compile(r"Trace (T[a-j]+)\.")
#: A loop-0 answer that makes the trace give no answer, or fail (the server refuses the request).
NONE, FAIL = "none", "fail"
GENSELECT_MARK = "selected_solution_id"
PROBLEM = "What is the number of positive divisors of 36?"


@dataclass(frozen=True)
class Produced:
    trace: str
    loop: int
    answer: str
    logprob: float
    aggregated: tuple[str, ...]


@dataclass
class PopulationModel:
    """Loop-0 traces answer `first[i]` in the order they are produced (cycling); an aggregation answers
    `aggregate(answers of its attempts)`; a GenSelect prompt gets `choose(prompt)` as its reply. `hold(request,
    loop)` may hold a reply until an event (loop -1: a GenSelect call). Each trace has
    a distinct confidence (its mean log-probability), so no vote is tied on confidence."""

    first: Sequence[str] = ("5", "9", "9", "7")
    aggregate: Callable[[list[str]], str] = lambda answers: max(answers, key=lambda a: (answers.count(a), a))
    choose: Callable[[str], str] = lambda _prompt: '{"selected_solution_id": 1}'
    hold: Callable[[Request, int], threading.Event | None] = lambda _request, _loop: None
    produced: dict[str, Produced] = field(default_factory=dict)
    genselect: list[Request] = field(default_factory=list)
    by_request: dict[int, list[str]] = field(default_factory=dict)
    """The traces made for each request (its choices), by the identity of its body."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Reply:
        prompt = request.prompt
        if GENSELECT_MARK in prompt:
            self.genselect.append(request)
            selection = Reply(content="I compared them.\n" + self.choose(prompt))
            selection.hold = self.hold(request, -1)  # a selection call: loop -1
            return selection
        attempts = tuple(TRACE.findall(prompt))
        with self._lock:
            number = len(self.produced)
            trace = "T" + "".join(chr(ord("a") + int(digit)) for digit in str(number))  # no digit in the text
            if attempts:
                loop = 1 + max(self.produced[a].loop for a in attempts)
                answer = self.aggregate([self.produced[a].answer for a in attempts])
            else:
                loop, answer = 0, self.first[sum(1 for p in self.produced.values() if p.loop == 0) % len(self.first)]
            logprob = -0.01 * (number + 1)
            self.produced[trace] = Produced(trace, loop, answer, logprob, attempts)
            self.by_request.setdefault(id(request.body), []).append(trace)
        if answer == FAIL:
            return Reply(content="refused", status=400)
        body = "I could not finish." if answer == NONE else f"\\boxed{{{answer}}}"
        reply = Reply(content=f"Trace {trace}. Reasoning of {trace}.\n{body}", logprobs=[logprob])
        reply.hold = self.hold(request, loop)
        return reply

    def delivered_traces(self, server: ScriptedServer) -> list[Produced]:
        """The traces the client received, in the order their requests were sent (choices of one request in
        order); traces of requests the client never received are left out."""
        return [
            self.produced[trace]
            for request in server.requests
            if request.delivered
            for trace in self.by_request.get(id(request.body), [])
        ]


def aggregation_requests(server: ScriptedServer) -> list[Request]:
    return [r for r in server.requests if TRACE.search(r.prompt) and GENSELECT_MARK not in r.prompt]


def choices(model: PopulationModel, request: Request) -> int:
    """The traces one request returned (its `n`, where the server honours it)."""
    return len(model.by_request.get(id(request.body), []))


def stored_parents(db: Path) -> dict[str, list[str]]:
    """Per stored rollout (its trace id), the trace ids it aggregated (read through the stored parents)."""
    from knowledge_flow.persistence import get_store

    with sqlite3.connect(db) as conn:
        run_id = conn.execute("SELECT run_id FROM kf_runs ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    rows = get_store(db).rollouts(run_id)
    trace_of = {row.id: TRACE.findall(row.content)[0] for row in rows if TRACE.findall(row.content)}
    return {trace_of[row.id]: [trace_of[p] for p in row.parents or []] for row in rows if row.id in trace_of}


def majority_of(traces: Sequence[Produced]) -> str:
    """The majority answer, ties to the more confident trace (the run's rule for the loops of rsa)."""
    traces = [t for t in traces if t.answer not in (NONE, FAIL)]
    counts = {t.answer: sum(1 for o in traces if o.answer == t.answer) for t in traces}
    top = max(counts.values())
    return max((t for t in traces if counts[t.answer] == top), key=lambda t: t.logprob).answer
