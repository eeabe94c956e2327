"""Statistics for comparing evaluation runs on the same problems (pure functions; nothing is read or sent).

- Accuracy with its 95% Wilson score interval (`wilson`).
- A paired comparison against a baseline run on the problems both runs finished: wins (this run right, the
  baseline wrong), losses (the reverse) and the exact two-sided McNemar p-value, i.e. the binomial test of
  the discordant pairs at 1/2 (`mcnemar_exact`).
- Tokens per problem (prompt, completion, both).
- Flips across iterations: per problem, consecutive iterations whose answers went from right to wrong or from
  wrong to right (an iteration without an answer counts as wrong).
- pass@1 of each iteration.

Entry points: `compare_items` takes two or more runs' stored items (``store.eval_items(eval_id)``) with a
label each and returns one `RunComparison` per run (JSON: `RunComparison.to_json`); `compare_runs` does the
same from `RunRecords`: it takes two or more `RunRecords` (one per run; the first is the baseline unless
`baseline` names another) and returns one `RunComparison` per run; `records_from_items` builds the records
from an evaluation's stored items (``kf_eval_items``: per-iteration grades, answers and tokens), and with
`final_rule` re-grades the label-free final answer from the stored answers by another rule (e.g. a
knowledge-flow run's ``last`` and ``majority:all`` from one run, with no request sent); a rule that votes over
every trace (``conf-vote:...``, ``majority-traces``) needs each run's traces (`votes`, from
`evaluation.revote.stored_votes`) and refuses without them. `records_from_grades` builds them from the grades
`kflow report` computed (`evaluation.report.grade`: answers as stored or read again, finals re-voted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any, Protocol

from knowledge_flow.records import AnswerType, TraceVote
from knowledge_flow.strategies.policies import final_answer
from knowledge_flow.text.answers import equivalent

Z95 = 1.959963984540054


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when there are no trials."""
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= total:
        raise ValueError(f"successes must be between 0 and {total}, got {successes}")
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return low, high


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of `wins` against `losses` at p = 1/2 (1.0 when
    there is no discordant pair)."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must not be negative")
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail: float = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class ProblemRecord:
    """One problem's stored results in one run."""

    problem_id: str
    correct: list[bool]
    """Per iteration: whether that iteration's answer was right."""
    final_correct: bool
    """Whether the run's label-free final answer was right."""
    prompt_tokens: list[int]
    """Per iteration (all thinkers of the iteration together)."""
    completion_tokens: list[int]
    answers: list[str | None] = field(default_factory=list)
    final_answer: str | None = None

    @property
    def tokens(self) -> int:
        return sum(self.prompt_tokens) + sum(self.completion_tokens)


@dataclass(frozen=True)
class RunRecords:
    """One run's finished problems, under a label."""

    label: str
    problems: list[ProblemRecord]


@dataclass(frozen=True)
class Paired:
    """This run against the baseline on the problems both finished."""

    baseline: str
    common: int
    wins: int
    """Problems this run got right and the baseline wrong."""
    losses: int
    """Problems the baseline got right and this run wrong."""
    both_right: int
    both_wrong: int
    p_value: float
    """Exact two-sided McNemar p-value of wins against losses."""

    @property
    def difference(self) -> float:
        """This run's accuracy minus the baseline's on the common problems."""
        return (self.wins - self.losses) / self.common if self.common else 0.0


@dataclass(frozen=True)
class RunComparison:
    label: str
    problems: int
    correct: int
    accuracy: float
    interval: tuple[float, float]
    """95% Wilson interval of the accuracy."""
    pass_at_1: list[float]
    """Per iteration: share of problems whose answer at that iteration was right."""
    prompt_tokens_per_problem: float
    completion_tokens_per_problem: float
    tokens_per_problem: float
    right_to_wrong: int
    """Consecutive iterations, over all problems, whose answer went from right to wrong."""
    wrong_to_right: int
    paired: Paired | None
    """None for the baseline itself."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: The columns of a comparison table (`cells` gives a row), shared by `kflow report --compare` and the
#: accuracy benchmark.
COLUMNS = (
    "run",
    "accuracy",
    "95% CI",
    "vs baseline W/L",
    "McNemar p",
    "tokens/problem (prompt+completion)",
    "r->w",
    "w->r",
    "pass@1 by iteration (%)",
)


def cells(entry: RunComparison) -> list[str]:
    """One row of the comparison table."""
    low, high = entry.interval
    pair = entry.paired
    return [
        entry.label,
        f"{100 * entry.accuracy:.1f}% ({entry.correct}/{entry.problems})",
        f"{100 * low:.0f}-{100 * high:.0f}%",
        f"{pair.wins}/{pair.losses}" if pair else "baseline",
        f"{pair.p_value:.3f}" if pair else "—",
        f"{entry.tokens_per_problem:,.0f} ({entry.prompt_tokens_per_problem:,.0f}+"
        f"{entry.completion_tokens_per_problem:,.0f})",
        str(entry.right_to_wrong),
        str(entry.wrong_to_right),
        " / ".join(f"{100 * a:.0f}" for a in entry.pass_at_1),
    ]


def flips(correct: Sequence[bool]) -> tuple[int, int]:
    """(right -> wrong, wrong -> right) between consecutive iterations."""
    down = sum(1 for before, after in pairwise(correct) if before and not after)
    up = sum(1 for before, after in pairwise(correct) if not before and after)
    return down, up


def paired(run: RunRecords, baseline: RunRecords) -> Paired:
    theirs = {p.problem_id: p.final_correct for p in baseline.problems}
    wins = losses = both_right = both_wrong = 0
    for problem in run.problems:
        if problem.problem_id not in theirs:
            continue
        mine, other = problem.final_correct, theirs[problem.problem_id]
        wins += mine and not other
        losses += other and not mine
        both_right += mine and other
        both_wrong += not mine and not other
    common = wins + losses + both_right + both_wrong
    return Paired(baseline.label, common, wins, losses, both_right, both_wrong, mcnemar_exact(wins, losses))


def summarize(run: RunRecords, baseline: RunRecords | None = None) -> RunComparison:
    n = len(run.problems)
    correct = sum(1 for p in run.problems if p.final_correct)
    depth = max((len(p.correct) for p in run.problems), default=0)
    pass_at_1 = [
        sum(1 for p in run.problems if k < len(p.correct) and p.correct[k]) / n if n else 0.0 for k in range(depth)
    ]
    down = up = 0
    for problem in run.problems:
        d, u = flips(problem.correct)
        down += d
        up += u
    return RunComparison(
        label=run.label,
        problems=n,
        correct=correct,
        accuracy=correct / n if n else 0.0,
        interval=wilson(correct, n),
        pass_at_1=pass_at_1,
        prompt_tokens_per_problem=sum(sum(p.prompt_tokens) for p in run.problems) / n if n else 0.0,
        completion_tokens_per_problem=sum(sum(p.completion_tokens) for p in run.problems) / n if n else 0.0,
        tokens_per_problem=sum(p.tokens for p in run.problems) / n if n else 0.0,
        right_to_wrong=down,
        wrong_to_right=up,
        paired=None if baseline is None or baseline is run else paired(run, baseline),
    )


def compare_runs(runs: Sequence[RunRecords], baseline: int | str = 0) -> list[RunComparison]:
    """One comparison per run, in order; each but the baseline is paired with it. `baseline` is an index
    into `runs` or a label."""
    if not runs:
        return []
    if isinstance(baseline, str):
        matches = [run for run in runs if run.label == baseline]
        if not matches:
            raise ValueError(f"no run is labelled {baseline!r}")
        base = matches[0]
    else:
        base = runs[baseline]
    return [summarize(run, base) for run in runs]


class StoredItem(Protocol):
    """What `records_from_items` reads of a stored evaluation item (`persistence.store.EvalItemRow`)."""

    @property
    def problem_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def gold(self) -> str: ...
    @property
    def final_answer(self) -> str | None: ...
    @property
    def final_correct(self) -> bool | None: ...
    @property
    def answers(self) -> list[str | None]: ...
    @property
    def correct(self) -> list[bool]: ...
    @property
    def prompt_tokens(self) -> list[int]: ...
    @property
    def completion_tokens(self) -> list[int]: ...
    @property
    def run_id(self) -> str | None: ...


class Graded(Protocol):
    """What `records_from_grades` reads of a problem's grades (`evaluation.report.Grades`)."""

    @property
    def correct(self) -> list[bool]: ...
    @property
    def final_correct(self) -> bool: ...
    @property
    def answers(self) -> list[str | None]: ...
    @property
    def final(self) -> str | None: ...


def records_from_grades(label: str, items: Sequence[StoredItem], grades: Sequence[Graded]) -> RunRecords:
    """The finished problems of an evaluation run, graded as `grades` say (one per item)."""
    problems = [
        ProblemRecord(
            problem_id=str(item.problem_id),
            correct=list(graded.correct),
            final_correct=graded.final_correct,
            prompt_tokens=[int(t) for t in item.prompt_tokens],
            completion_tokens=[int(t) for t in item.completion_tokens],
            answers=list(graded.answers),
            final_answer=graded.final,
        )
        for item, graded in zip(items, grades, strict=True)
        if item.status == "done"
    ]
    return RunRecords(label, problems)


def records_from_items(
    label: str,
    items: Iterable[StoredItem],
    *,
    final_rule: str | None = None,
    answer_type: AnswerType = "integer",
    votes: Mapping[str, Sequence[TraceVote]] | None = None,
) -> RunRecords:
    """The finished problems of an evaluation run. With `final_rule` (``last``, ``majority:W``), the final
    answer is chosen again from the stored per-iteration answers by that rule and graded against the gold
    answer; a rule that votes over every trace votes over each run's `votes` (refused without them);
    otherwise the run's own final grade is used."""
    problems = []
    for item in items:
        if item.status != "done":
            continue
        answers = list(item.answers)
        if final_rule is None:
            chosen, right = item.final_answer, bool(item.final_correct)
        else:
            traces = None if votes is None else list(votes.get(item.run_id or "", []))
            chosen = final_answer(final_rule, answers, answer_type, traces) if answers else None
            right = equivalent(item.gold, chosen, answer_type)
        problems.append(
            ProblemRecord(
                problem_id=str(item.problem_id),
                correct=[bool(c) for c in item.correct],
                final_correct=right,
                prompt_tokens=[int(t) for t in item.prompt_tokens],
                completion_tokens=[int(t) for t in item.completion_tokens],
                answers=answers,
                final_answer=chosen,
            )
        )
    return RunRecords(label, problems)


def first_rollout(label: str, run: RunRecords) -> RunRecords:
    """A run cut to its first iteration: 'one rollout' (pass@1 of rollout 0, with rollout 0's tokens)."""
    problems = [
        ProblemRecord(
            problem_id=p.problem_id,
            correct=p.correct[:1],
            final_correct=bool(p.correct[:1] and p.correct[0]),
            prompt_tokens=p.prompt_tokens[:1],
            completion_tokens=p.completion_tokens[:1],
            answers=p.answers[:1],
            final_answer=p.answers[0] if p.answers else None,
        )
        for p in run.problems
    ]
    return RunRecords(label, problems)


def compare_items(
    runs: Sequence[tuple[str, Iterable[StoredItem]]],
    *,
    baseline: int | str = 0,
    final_rules: Sequence[str | None] | None = None,
    answer_type: AnswerType = "integer",
) -> list[RunComparison]:
    """`compare_runs` on stored evaluation items: `runs` holds (label, items) per run (e.g. ``(eval_id,
    store.eval_items(eval_id))``); `final_rules` (one per run, None: the run's own final answer) re-grades
    final answers from the stored answers."""
    rules = list(final_rules) if final_rules is not None else [None] * len(runs)
    if len(rules) != len(runs):
        raise ValueError("final_rules needs one entry per run")
    records = [
        records_from_items(label, items, final_rule=rule, answer_type=answer_type)
        for (label, items), rule in zip(runs, rules, strict=True)
    ]
    return compare_runs(records, baseline)
