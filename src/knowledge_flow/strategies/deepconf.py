"""`deepconf`: parallel sampling with online confidence filtering and a confidence-weighted vote (DeepConf,
Fu et al., arXiv 2508.15260), on a stock OpenAI-compatible server: no patched engine.

Defaults are the reference implementation's online mode (facebookresearch/deepconf): a budget of 256 traces
(`trace_budget`, warm-up included), 64000 new tokens per trace (fitted to the served context), temperature
0.6, top-p 0.95, 20 log-probabilities per token, groups of 2048 tokens. A value the user gives wins.

- Iteration 0 is the warm-up wave: `warmup_traces` rollouts (16), streamed with top log-probabilities and never
  stopped. Their lowest group confidences set the online threshold: the ``100 - confidence_keep``
  percentile (keep 90: DeepConf-high, the default; 10: DeepConf-low). Warm-up traces below it do not vote.
- Each later iteration is a wave of `thinkers` rollouts (16; the last wave trimmed to the trace budget),
  streamed; the client closes a stream as soon as the mean confidence of its last `confidence_window` tokens
  falls below the threshold. A stopped trace is stored (the tokens received are the tokens paid for; stop
  reason ``gconf_threshold``) and does not vote; nor does a finished trace whose lowest group confidence is
  below the threshold (``below_threshold``: a trace shorter than the window is never stopped mid-way).
- Consensus (stop policy ``consensus:0.95``) is checked as each trace of a wave finishes, in finishing order
  (`knowledge_flow.nodes.waves`): once the leading answer holds 95% of the weighted vote, the wave's streams
  still running are closed (stop reason ``consensus_cancelled``; they do not vote) and the run stops.
- The iteration's answer is the wave's confidence-weighted vote (`select_rule` ``conf-vote``, weight
  `confidence_score` ``lowest``); the final answer is ``conf-vote:lowest`` over every counted trace.

Every rollout sends the prompt set's ``[deepconf]`` ``first`` template; no knowledge passes between them.
Without log-probabilities from the server there is no threshold: nothing is stopped and votes are plain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from knowledge_flow.options import DEFAULT_WINDOW
from knowledge_flow.prompts import PromptSpec
from knowledge_flow.records import Candidate
from knowledge_flow.strategies.base import (
    COMMON_VARIABLES,
    BaseStrategy,
    Distilled,
    RolloutPrompt,
    Rules,
    Screened,
    Step,
    Streaming,
)
from knowledge_flow.strategies.confidence import below_threshold, warmup_threshold

STOPPED = "gconf_threshold"
BELOW = "below_threshold"


class DeepConfRules(Rules):
    pass


SPEC = PromptSpec(
    table="deepconf",
    required=("first",),
    optional=("system", "prefill_first"),
    variables=COMMON_VARIABLES,
    rules=DeepConfRules,
)


class DeepConf(BaseStrategy):
    name = "deepconf"
    spec = SPEC
    final_answer_rule = "conf-vote:lowest"
    stop_policy = "consensus:0.95"
    select_rule = "conf-vote"
    confidence_score = "lowest"
    defaults: Mapping[str, Any] = {"thinkers": 16, "trace_budget": 256, "max_new_tokens": 64000, "top_p": 0.95}

    def first_wave(self, params: Mapping[str, Any]) -> int:
        return int(params.get("warmup_traces") or params["thinkers"])

    def build_prompt(self, step: Step) -> RolloutPrompt:
        return self.render(step, "first", self.variables(step), step.rules.max_tokens_fraction)

    def streaming(self, step: Step) -> Streaming:
        online = step.iteration > 0  # the warm-up wave is never stopped: it sets the threshold
        threshold = step.state.get("confidence_threshold") if online else None
        return Streaming(threshold, int(step.params.get("confidence_window") or DEFAULT_WINDOW), online)

    def screen(self, step: Step, candidates: list[Candidate]) -> Screened:
        """After the warm-up wave, set the threshold; keep every trace below it out of votes."""
        update: dict[str, Any] = {}
        threshold = step.state.get("confidence_threshold")
        if step.iteration == 0:
            warmup = [
                (c.get("measures") or {})["lowest"]
                for c in candidates
                if c["error"] is None and (c.get("measures") or {}).get("lowest") is not None
            ]
            threshold = warmup_threshold(warmup, float(step.params.get("confidence_keep") or 90.0))
            update["confidence_threshold"] = threshold
        screened = []
        for candidate in candidates:
            below = below_threshold(candidate.get("measures"), threshold)
            if below and not candidate.get("excluded") and candidate["error"] is None:
                candidate = Candidate(**{**candidate, "excluded": BELOW})
            screened.append(candidate)
        return Screened(screened, update)

    def distill(self, step: Step, best: Candidate, kept: Sequence[Candidate], update_reference: bool) -> Distilled:
        _, answer, changed = self.reference_update(step.state, best, update_reference)
        return Distilled([], None, answer, changed)
