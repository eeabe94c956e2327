"""Scripted replies for evaluation tests: the reply depends only on (problem, iteration).

The iteration is read from the prompt itself (each summary carries ``ITER-k``, and rollout k+1 shows it as
its reference solution), so replies stay the same whatever order, retries or crashes the requests see.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from tests.support.scripted_server import Reply, Request, Responder, kf_output

_ITER = re.compile(r"ITER-(\d+)")


def iteration_of(prompt: str) -> int:
    if "## Reference Solution" not in prompt:
        return 0
    section = prompt.split("## Reference Solution", 1)[1].split("## Wrong Answer List", 1)[0]
    match = _ITER.search(section)
    return int(match.group(1)) + 1 if match else 0


def eval_responder(
    answer: Callable[[str, int], str],
    delay: Mapping[str, float] | None = None,
) -> Responder:
    """`answer(problem_key, k)` gives rollout k's answer; the error report names the previous answer."""

    def respond(request: Request) -> Reply:
        k = iteration_of(request.prompt)
        current = answer(request.key, k)
        report = None
        if k > 0:
            previous = answer(request.key, k - 1)
            report = "N/A" if previous == current else f"The Answer cannot be {previous}, because of step {k}."
        return Reply(
            content=kf_output(current, f"ITER-{k}: the answer is {current}.", report),
            delay_s=(delay or {}).get(request.key, 0.0),
        )

    return respond
