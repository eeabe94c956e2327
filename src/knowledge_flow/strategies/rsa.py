"""`rsa`: Recursive Self-Aggregation (Venkatraman et al., arXiv 2509.26626; the loop of the authors'
``eval_loop.py``): a population of N solutions, each loop replacing every member by the model's aggregation
of K solutions drawn from the previous loop.

- Population N = `thinkers` (16 by default), loops T = `iterations` (10 by default, loop 0 included), K =
  `aggregation_size` (4; K = 1 is self-refinement; K > N is refused).
- Loop 0 (iteration 0): N independent traces of the ``[rsa]`` table's ``first`` template.
- Loop t > 0: member i sends the ``aggregate`` template with ``candidates``: K traces of loop t - 1 (``number``,
  ``text``: the final text, the reasoning of thinking models left out, ``answer``, ``summary``), drawn for it
  alone, without replacement, from loop t - 1's usable traces (no failure, an answer, not kept out of votes).
  Fewer than K usable traces: a member gets all of them (in its own random order); none: the loop sends
  loop 0's prompt.
- The draw (`draw_subsets`): uniformly at random (`aggregation_pick` ``uniform``, the paper), or with
  probability proportional to each trace's confidence (``confidence``: the run's `confidence_score`, a
  DeepConf measure; a trace without it weighs as little as the least confident one), from a generator seeded
  with the run id and the loop, so a draw made again is the same draw. The subsets of loop t are drawn when loop
  t - 1 is distilled and kept in the state (`State.aggregation`), so they are checkpointed before any request
  of loop t is sent; each member's rollout stores the ids it aggregated (``parents_json``), which `kflow show`
  draws as the lineage.
- Each loop's answer is its majority (select rule ``vote``: ties to the more confident member, then to the
  later one); the final answer is the last loop's (``last``), i.e. the majority of the last population. The
  final-answer rule ``genselect`` asks one call to pick among the last population instead.

Every member is a rollout like any other: stored before it is used, never requested twice after a crash,
counted in the run's tokens. No knowledge list and no reference solution pass between loops: only the traces.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from knowledge_flow.prompts import PromptSpec
from knowledge_flow.records import AggregationPlan, Candidate
from knowledge_flow.strategies.base import (
    COMMON_OPTIONAL,
    COMMON_VARIABLES,
    BaseStrategy,
    Distilled,
    RolloutPrompt,
    Rules,
    Step,
)
from knowledge_flow.strategies.selection import stored_candidates, stored_views
from knowledge_flow.strategies.thinkers import can_vote, score

FIRST, AGGREGATE = "first", "aggregate"


class RsaRules(Rules):
    pass


SPEC = PromptSpec(
    table="rsa",
    required=(FIRST, AGGREGATE),
    optional=COMMON_OPTIONAL,
    variables=COMMON_VARIABLES | {"candidates"},
    rules=RsaRules,
)


def draw_subsets(
    pool: Sequence[int],
    members: int,
    size: int,
    seed: str,
    weights: Sequence[float] | None = None,
) -> list[list[int]]:
    """For each of `members`, `size` distinct entries of `pool` (all of them, shuffled, when the pool is
    smaller), drawn by a generator seeded with `seed`: uniformly, or one after another with probability
    proportional to `weights` among those not yet drawn."""
    generator = random.Random(seed)
    take = min(size, len(pool))
    subsets = []
    for _ in range(members):
        if weights is None:
            subsets.append(generator.sample(list(pool), take))
            continue
        left = list(range(len(pool)))
        chosen: list[int] = []
        for _ in range(take):
            total = sum(weights[i] for i in left)
            mark = generator.random() * total
            position = 0
            while position < len(left) - 1 and mark >= weights[left[position]]:
                mark -= weights[left[position]]
                position += 1
            chosen.append(pool[left.pop(position)])
        subsets.append(chosen)
    return subsets


def confidence_weights(candidates: Sequence[Candidate], by: str) -> list[float] | None:
    """Positive weights from the candidates' scores (`thinkers.score`); a candidate without one weighs as
    little as the least confident one with one; None when none has a score (the draw is then uniform)."""
    scores = [score(c, by) for c in candidates]
    known = [s for s in scores if math.isfinite(s)]
    if not known:
        return None
    floor = min(known)
    return [max(s if math.isfinite(s) else floor, 1e-9) for s in scores]


def plan_for(step: Step, candidates: Sequence[Candidate], loop: int) -> AggregationPlan:
    """The subsets of `loop`, drawn from `candidates` (the loop before it, screened)."""
    params = step.params
    answer_type = params["answer_type"]
    usable = sorted((c for c in candidates if can_vote(c, answer_type)), key=lambda c: c.get("thinker", 0))
    weights = None
    if params.get("aggregation_pick") == "confidence":
        weights = confidence_weights(usable, params.get("confidence_score", "mean-logprob"))
    pool = [c.get("thinker", 0) for c in usable]
    members = int(params["thinkers"])
    size = int(params.get("aggregation_size") or 4)
    seed = f"{step.state['run_id']}:{loop}:rsa"
    return AggregationPlan(iteration=loop, subsets=draw_subsets(pool, members, size, seed, weights))


class Rsa(BaseStrategy):
    name = "rsa"
    spec = SPEC
    select_rule = "vote"
    final_answer_rule = "last"
    defaults: Mapping[str, Any] = {"thinkers": 16, "iterations": 10}
    final_pool: Literal["all", "last"] = "last"
    vote_ties: Literal["first", "last"] = "last"

    def subsets(self, step: Step) -> list[list[int]]:
        """This loop's subsets: the plan drawn when the previous loop was distilled, else the same draw made
        now from the stored previous loop (a run extended or reopened after it was distilled)."""
        plan = step.state.get("aggregation")
        if plan is not None and plan["iteration"] == step.iteration:
            return plan["subsets"]
        previous = stored_candidates(step.history, step.state["run_id"], step.iteration - 1)
        return plan_for(step, previous, step.iteration)["subsets"]

    def build_prompts(self, step: Step, count: int) -> list[RolloutPrompt]:
        fraction = step.rules.max_tokens_fraction
        if step.iteration == 0:
            return [self.render(step, FIRST, self.variables(step), fraction)] * count
        run_id, previous = step.state["run_id"], step.iteration - 1
        prompts = []
        subsets = self.subsets(step)
        for member in range(count):
            subset = subsets[member] if member < len(subsets) else []
            if not subset:  # nothing usable in the previous loop: an independent trace, as in loop 0
                prompts.append(self.render(step, FIRST, self.variables(step), fraction))
                continue
            ids = [f"{run_id}:{previous}:{thinker}" for thinker in subset]
            variables = {**self.variables(step), "candidates": stored_views(step.history, ids)}
            prompt = self.render(step, AGGREGATE, variables, fraction)
            prompts.append(RolloutPrompt(prompt.messages, prompt.max_tokens, prompt.prefill, parents=tuple(ids)))
        return prompts

    def variables(self, step: Step) -> dict[str, Any]:
        return {**super().variables(step), "reference": None, "candidates": []}

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        """The loop's answer (its majority) is recorded; the next loop's subsets are drawn from this loop."""
        _, answer, changed = self.reference_update(step.state, best, update_reference)
        plan = plan_for(step, step.state.get("candidates") or [], step.iteration + 1)
        return Distilled([], None, answer, changed, state={"aggregation": plan})
