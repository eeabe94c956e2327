"""A scripted model for TRT runs: it answers planning, reflection, verifier, manager and solver prompts by
their content, so concurrent thinkers get deterministic replies."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.scripted_server import Reply, Request, kf_output

PLAN_MARK = "distinct strategies for solving it"
REFLECT_MARK = "## Tasks\nDo not solve the problem yourself."
VERIFY_MARK = "## Candidate solutions"
MANAGE_MARK = "## Tasks\nDo not solve the problem again yourself."
_TECHNIQUE = re.compile(r"^Key technique: (.+)$", re.MULTILINE)


def kind_of(request: Request) -> str:
    prompt = request.prompt
    if MANAGE_MARK in prompt:
        return "manage"
    if PLAN_MARK in prompt:
        return "plan"
    if REFLECT_MARK in prompt:
        return "reflect"
    if VERIFY_MARK in prompt:
        return "verify"
    return "solve"


def technique_of(request: Request) -> str | None:
    match = _TECHNIQUE.search(request.prompt)
    return match.group(1) if match else None


def strategies(*names: str) -> list[dict[str, str]]:
    return [{"key_technique": name, "what_to_try": f"try {name}"} for name in names]


def lesson(name: str) -> dict[str, Any]:
    return {
        "pattern": f"pattern {name}",
        "when_to_use": [f"sign {name}"],
        "key_insight": f"insight {name}",
        "observed_mistakes": [f"mistake {name}"],
    }


@dataclass
class TrtModel:
    """Replies by kind: `plan` (the planning reply), `reflect` (one per reflection, in order), `verify` (one per
    verifier call, in order), `manage` (one per manager call, in order; a `Reply` is sent as it is) and `solve`
    (technique -> (answer, mean log-probability))."""

    plan: str
    reflect: Sequence[str] = ()
    verify: Sequence[str] = ()
    manage: Sequence[str | Reply] = ()
    solve: Mapping[str | None, tuple[str, float]] = field(default_factory=dict)
    reasoning: str | None = None
    """When set, solver replies carry this reasoning (then the technique) in the server's reasoning field."""
    hold: Callable[[Request], threading.Event | None] = lambda _request: None
    calls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Reply:
        kind = kind_of(request)
        with self._lock:
            seen = self.calls.get(kind, 0)
            if kind != "solve":
                self.calls[kind] = seen + 1
        if kind == "plan":
            reply = Reply(content=self.plan)
        elif kind == "reflect":
            reply = Reply(content=self.reflect[min(seen, len(self.reflect) - 1)])
        elif kind == "verify":
            reply = Reply(content=self.verify[min(seen, len(self.verify) - 1)])
        elif kind == "manage":
            scripted = self.manage[min(seen, len(self.manage) - 1)]
            reply = scripted if isinstance(scripted, Reply) else Reply(content=scripted)
        else:
            technique = technique_of(request)
            answer, logprob = self.solve.get(technique, self.solve.get(None, ("0", -1.0)))
            reply = Reply(content=kf_output(answer, f"Solved with {technique or 'own approach'}."), logprobs=[logprob])
            if self.reasoning is not None:
                reply.reasoning = f"{self.reasoning} {technique}"
        reply.hold = self.hold(request)
        return reply


def plan_reply(*names: str) -> str:
    return "Here is my plan.\n```json\n" + json.dumps({"strategies": strategies(*names)}) + "\n```"


def reflect_reply(names: Sequence[str], learned: str | None = None, disable: int | None = None) -> str:
    body: dict[str, Any] = {"reflection": lesson(learned) if learned else None, "strategies": strategies(*names)}
    body["disable_knowledge_id"] = disable
    return json.dumps(body)


def manage_reply(
    chosen: int | None, names: Sequence[str] = (), learned: str | None = None, disable: int | None = None
) -> str:
    """A manager's reply: the chosen solution, the next strategies, a lesson, an item to disable."""
    body: dict[str, Any] = {
        "selected_solution_id": chosen,
        "reflection": lesson(learned) if learned else None,
        "strategies": strategies(*names),
        "disable_knowledge_id": disable,
    }
    return "I compared the solutions.\n" + json.dumps(body)
