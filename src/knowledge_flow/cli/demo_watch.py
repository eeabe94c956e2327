"""What `kflow demo` prints while its evaluation runs: each rollout as it completes (its answer against the
gold answer, the reference it was shown, every knowledge item as it is added), a progress line while a rollout
is generated, and each problem's result against self-consistency over the same rollouts.

It watches the evaluation from the outside (the checkpoints and the rollout store), in the main thread, while
the evaluation's worker runs the graph: nothing here changes how a run goes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from rich.status import Status
from rich.text import Text

from knowledge_flow.cli.common import clean, err
from knowledge_flow.evaluation.rows import EvalItemRow
from knowledge_flow.evaluation.runner import Graph
from knowledge_flow.evaluation.trajectories import first_line
from knowledge_flow.persistence.store import RolloutRow, RolloutStore
from knowledge_flow.strategies.policies import final_answer
from knowledge_flow.text.answers import equivalent
from knowledge_flow.text.sentences import sentences

#: The demo compares the run's final answer with self-consistency's: the majority over the same rollouts.
SELF_CONSISTENCY = "majority:all"
#: Seconds between looks at the store, and between plain progress lines when stderr is not a terminal.
POLL_S = 0.5
PLAIN_PROGRESS_S = 20.0


def verdict(gold: str, answer: str | None, answer_type: Any) -> Text:
    if answer is None:
        return Text("no answer", style="yellow")
    return Text("right", style="bold green") if equivalent(gold, answer, answer_type) else Text("wrong", style="red")


def first_sentence(text: str) -> str:
    body = text.strip().lstrip(":").strip()
    found = sentences(body[:2000])
    return (found[0] if found else body).strip()


@dataclass
class Watched:
    """One problem as printed so far."""

    item: EvalItemRow
    printed: int = 0
    """Rollouts printed."""
    started: float = field(default_factory=time.monotonic)
    rollout_started: float = field(default_factory=time.monotonic)
    finished: bool = False
    announced: bool = False
    last_plain: float = 0.0
    plain_for: int = -1
    """The rollout the last plain progress line was about."""


@dataclass
class Totals:
    problems: int = 0
    right: int = 0
    self_consistency_right: int = 0
    rollouts: int = 0
    tokens: int = 0
    models: set[str] = field(default_factory=set)


class DemoWatch:
    """Call `tick` often (the evaluation's `on_tick`); `close` at the end."""

    def __init__(self, graph: Graph, store: RolloutStore, items: list[EvalItemRow], iterations: int) -> None:
        self.graph = graph
        self.store = store
        self.iterations = iterations
        self.watched = [Watched(item) for item in items]
        self.totals = Totals()
        self.last_poll = 0.0
        self.status: Status | None = Status("", console=err) if err.is_terminal else None
        self.status_running = False

    # --- the loop -----------------------------------------------------------------------------------------
    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self.last_poll < POLL_S and not force:
            return
        self.last_poll = now
        for index, watched in enumerate(self.watched):
            if watched.finished:
                continue
            if not self.advance(index, watched):
                return  # problems run one after the other: the first unfinished one is the one running

    def advance(self, index: int, watched: Watched) -> bool:
        """Print what is new for `watched`; True when it is finished."""
        config: Any = {"configurable": {"thread_id": watched.item.thread_id}}
        values = self.graph.get_state(config).values
        if not values:
            return False
        if not watched.announced:
            self.announce(index, watched)
        done = int(values.get("iteration", 0))
        while watched.printed < done:
            self.print_rollout(watched, values, watched.printed, self.states(config, watched.printed))
            watched.printed += 1
            watched.rollout_started = time.monotonic()
        if values.get("status") in ("done", "failed"):
            self.print_result(watched, values)
            watched.finished = True
            return True
        self.progress(watched)
        return False

    # --- printing -----------------------------------------------------------------------------------------
    def say(self, text: Text | str) -> None:
        if self.status_running and self.status is not None:
            self.status.stop()
            self.status_running = False
        err.print(text)

    def states(self, config: Any, iteration: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The thread's state before rollout `iteration` and after it (from its checkpoints: what the rollout
        was shown, and what it left), however late the watch looks."""
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        for snapshot in self.graph.get_state_history(config):  # newest first
            done = int(snapshot.values.get("iteration", -1))
            if done == iteration and not before:
                before = dict(snapshot.values)
            if done == iteration + 1 and not after:
                after = dict(snapshot.values)
        return before, after

    def announce(self, index: int, watched: Watched) -> None:
        watched.announced = True
        watched.started = watched.rollout_started = time.monotonic()
        item = watched.item
        self.say(Text(""))
        self.say(
            Text(
                f"problem {index + 1} of {len(self.watched)} (GSM8K id {item.problem_id}, gold answer {item.gold}):",
                style="bold",
            )
        )
        self.say(Text(f"  {clean(item.problem, 400)}"))

    def progress(self, watched: Watched) -> None:
        """A line that shows a rollout is being generated (a spinner on a terminal, else a line now and then)."""
        if watched.printed >= self.iterations:
            return
        elapsed = time.monotonic() - watched.rollout_started
        line = f"  rollout {watched.printed} of {self.iterations}: generating… {elapsed:.0f} s"
        if self.status is not None:
            self.status.update(line)
            if not self.status_running:
                self.status.start()
                self.status_running = True
            return
        if watched.plain_for != watched.printed or time.monotonic() - watched.last_plain >= PLAIN_PROGRESS_S:
            watched.plain_for, watched.last_plain = watched.printed, time.monotonic()
            err.print(line)

    def chosen_row(self, run_id: str, iteration: int) -> RolloutRow | None:
        rid = self.store.best_rollout_id(run_id, iteration)
        return self.store.get_rollout(rid) if rid else None

    def print_rollout(
        self, watched: Watched, values: dict[str, Any], iteration: int, states: tuple[dict[str, Any], dict[str, Any]]
    ) -> None:
        params = values["params"]
        before, after = states
        answer = values["answers"][iteration] if iteration < len(values["answers"]) else None
        reference = before.get("reference") if iteration else None
        row = self.chosen_row(values["run_id"], iteration)
        tokens = f"{row.prompt_tokens}+{row.completion_tokens} tokens, {row.latency_s:.1f} s" if row else ""
        line = Text(f"  rollout {iteration}: answer {clean(answer)}  ")
        line.append_text(verdict(watched.item.gold, answer, params["answer_type"]))
        line.append(f"  [{tokens}]", style="dim")
        self.say(line)
        prompt = "\n".join(m["content"] for m in row.messages) if row else ""
        shown = first_line(reference) if reference else None
        if iteration == 0:
            self.say(Text("    reference: none (the first rollout sees only the problem)", style="dim"))
        elif shown and shown[:60] in prompt:
            self.say(Text(f"    reference (the summary it was shown): {clean(shown, 150)}", style="dim"))
        else:
            self.say(Text("    reference: none (an independent rollout: the answers so far tie)", style="dim"))
        if row is not None and row.error:
            self.say(Text(f"    failed: {clean(row.error, 200)}", style="yellow"))
        added = row.knowledge_added if row is not None else None
        if added:
            item = json.loads(added)
            wrong = f"not {clean(item.get('wrong_answer'))}: " if item.get("wrong_answer") is not None else ""
            self.say(Text(f"    + knowledge item: {wrong}{clean(first_sentence(item['text']), 220)}", style="cyan"))
        count = len(after.get("knowledge") or [])
        self.say(Text(f"    knowledge list: {count} item{'s' if count != 1 else ''}", style="dim"))

    def print_result(self, watched: Watched, values: dict[str, Any]) -> None:
        params = values["params"]
        gold, answer_type = watched.item.gold, params["answer_type"]
        answers = list(values.get("answers") or [])
        final = values.get("final_answer")
        voted = final_answer(SELF_CONSISTENCY, answers, answer_type)
        usage = values.get("usage") or {}
        tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        run = self.store.get_run(values["run_id"])
        line = Text(f"  final answer ({params['final_answer_rule']}): {clean(final)} vs gold {gold}: ")
        line.append_text(verdict(gold, final, answer_type))
        line.append(f"; self-consistency (majority over the same rollouts): {clean(voted)}: ")
        line.append_text(verdict(gold, voted, answer_type))
        self.say(line)
        elapsed = time.monotonic() - watched.started
        self.say(Text(f"  {len(answers)} rollouts, {tokens:,} tokens, {elapsed:.0f} s", style="dim"))
        totals = self.totals
        totals.problems += 1
        totals.right += int(equivalent(gold, final, answer_type))
        totals.self_consistency_right += int(equivalent(gold, voted, answer_type))
        totals.rollouts += len(answers)
        totals.tokens += tokens
        if run is not None:
            totals.models.add(run.answered_by)

    def print_totals(self) -> None:
        totals = self.totals
        if not totals.problems:
            return
        err.print(Text(""))
        line = Text(f"{totals.problems} problems, {totals.rollouts} rollouts, {totals.tokens:,} tokens; answered by ")
        line.append(", ".join(sorted(totals.models)) or "—", style="bold")
        err.print(line)
        err.print(
            Text(
                f"final answers right: knowledge-flow {totals.right} of {totals.problems}, self-consistency over the "
                f"same rollouts {totals.self_consistency_right} of {totals.problems}",
                style="bold",
            )
        )

    def close(self) -> None:
        if self.status_running and self.status is not None:
            self.status.stop()
            self.status_running = False
