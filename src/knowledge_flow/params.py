"""A run's resolved parameters: the options given (`knowledge_flow.options`), validated, with the defaults that
depend on other options filled in, and the prompt set loaded and checked against the strategy.

Shared by the graph (before anything is written, and in `prepare`) and the command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from knowledge_flow.context import LOCAL_MODEL_ALIAS
from knowledge_flow.options import (
    DEFAULT_TOP_LOGPROBS,
    MAX_ITERATIONS,
    OPTION_NAMES,
    ModelFamily,
    RunOptions,
    fallback_of,
    parse_options,
)
from knowledge_flow.prompts import DEFAULT_SETS, PromptSet, PromptTable, load_prompt_set
from knowledge_flow.records import RunParams
from knowledge_flow.strategies.budget import budget_of, waves_for
from knowledge_flow.strategies.confidence import MEASURES
from knowledge_flow.strategies.genselect import SPEC as GENSELECT_SPEC
from knowledge_flow.strategies.policies import (
    ConfVote,
    FinalRule,
    GenSelect,
    parse_final_answer_rule,
    parse_stop_policy,
)

#: Request fields a run sets through its own options; `extra_body` may not set them again.
OWN_REQUEST_FIELDS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "repeat_penalty",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "stream",
        "stream_options",
        "continue_final_message",
        "add_generation_prompt",
        "seed",
        "return_tokens_as_token_ids",
    }
)

__all__ = ["LOCAL_MODEL_ALIAS", "MAX_ITERATIONS", "OPTION_NAMES", "recursion_limit", "resolve_params", "resolve_run"]


def detect_model_family(model: str) -> ModelFamily:
    """gpt-oss by name; Qwen3 thinking models by name (`Qwen3-*-Thinking*`, `QwQ`); otherwise instruct."""
    name = model.lower()
    if "gpt-oss" in name:
        return "gpt-oss"
    if ("qwen3" in name and "thinking" in name) or "qwq" in name:
        return "qwen3-thinking"
    return "instruct"


def default_model() -> str:
    return os.environ.get("KFLOW_MODEL") or LOCAL_MODEL_ALIAS


def resolve_params(given: Mapping[str, Any]) -> RunParams:
    """Fill defaults and validate. Raises ValueError with a message meant for the user."""
    return resolve_run(given)[0]


def resolve_run(given: Mapping[str, Any]) -> tuple[RunParams, PromptSet]:
    """The run's parameters and its prompt set (checked against the strategy's table, and rendered on sample
    states with `given`'s problem: `strategies.rehearsal`). Raises ValueError with a message meant for the
    user. Keys of `given` other than run options and the problem are ignored; None means "not given"."""
    from knowledge_flow.strategies import get_strategy
    from knowledge_flow.strategies.rehearsal import rehearse, rehearse_genselect

    options = parse_options({name: given.get(name) for name in OPTION_NAMES})
    strategy = get_strategy(options.strategy)
    model = (options.model or default_model()).strip()
    family: ModelFamily = options.model_family or detect_model_family(model)
    stop_policy = options.stop_policy or strategy.stop_policy
    parse_stop_policy(stop_policy)
    prompts = (options.prompts or DEFAULT_SETS[family]).strip()
    prompt_set = load_prompt_set(prompts)
    table = prompt_set.table(strategy.spec)  # the strategy's table must be there and valid
    # the final-answer rule: the run's, else the prompt set's (a rule of its table), else the strategy's
    final_rule = options.final_answer_rule or getattr(table.rules, "final_answer", None) or strategy.final_answer_rule
    final = parse_final_answer_rule(final_rule)
    clashes = sorted(OWN_REQUEST_FIELDS & set(options.extra_body or {}))
    if clashes:
        raise ValueError(f"extra_body may not set {', '.join(clashes)}: the run's own options set them")

    def pick(name: str) -> Any:
        """The user's value, else the strategy's default, else the run's."""
        value = getattr(options, name)
        return value if value is not None else strategy.defaults.get(name, fallback_of(name))

    thinkers = int(pick("thinkers"))
    iterations, trace_budget = budget(options, strategy, thinkers, pick)
    if options.topk_thinkers is not None and options.topk_thinkers > thinkers:
        raise ValueError(f"topk_thinkers ({options.topk_thinkers}) cannot exceed thinkers ({thinkers})")
    if strategy.name == "rsa" and options.aggregation_size > thinkers:
        raise ValueError(
            f"aggregation_size ({options.aggregation_size}) cannot exceed the population, thinkers ({thinkers})"
        )
    low = options.min_temperature if options.min_temperature is not None else options.temperature
    high = options.max_temperature if options.max_temperature is not None else max(low, options.temperature)
    if low > high:
        raise ValueError(f"min_temperature ({low}) cannot exceed max_temperature ({high})")
    params = RunParams(
        model=model,
        iterations=iterations,
        temperature=options.temperature,
        top_p=float(pick("top_p")),
        top_k=-1 if options.top_k == 0 else options.top_k,
        min_p=options.min_p,
        repetition_penalty=options.repetition_penalty,
        extra_body=options.extra_body or None,
        max_new_tokens=int(pick("max_new_tokens")),
        strategy=options.strategy,
        answer_type=options.answer_type or "integer",
        knowledge_budget_tokens=options.knowledge_budget_tokens,
        prefill=options.prefill or None,
        prompts=prompts,
        prompt_set=prompt_set.name,
        prompt_hash=prompt_set.digest,
        model_family=family,
        reasoning_effort=options.reasoning_effort or ("high" if family == "gpt-oss" else None),
        stop_policy=stop_policy,
        final_answer_rule=final_rule,
        thinkers=thinkers,
        topk_thinkers=options.topk_thinkers or thinkers,
        min_temperature=low,
        max_temperature=high,
        diversity_weight=options.diversity_weight,
        dynamic_temperature=options.dynamic_temperature,
        uncertainty_threshold=options.uncertainty_threshold,
        avoid_budget_tokens=options.avoid_budget_tokens,
        seed=options.seed,
        trace_budget=trace_budget,
        aggregation_size=options.aggregation_size,
        aggregation_pick=options.aggregation_pick,
        **selection_options(options, strategy, final, table),  # type: ignore[typeddict-item]
    )
    problem = given.get("problem")
    rehearse(strategy, table, params, problem if isinstance(problem, str) and problem.strip() else None)
    if params["select_rule"] == "genselect" or isinstance(final, GenSelect):
        rehearse_genselect(prompt_set.table(GENSELECT_SPEC), params, problem if isinstance(problem, str) else None)
    return params, prompt_set


def budget(options: RunOptions, strategy: Any, thinkers: int, pick: Any) -> tuple[int, int | None]:
    """(iterations, trace budget). A trace budget (given, or the strategy's) sets the iterations; iterations
    given without one set it to their whole waves (for strategies that count in traces); both given must
    agree."""
    first = strategy.first_wave({"thinkers": thinkers, "warmup_traces": options.warmup_traces})
    traces = pick("trace_budget")
    if options.iterations is not None and options.trace_budget is None:
        return options.iterations, budget_of(options.iterations, first, thinkers) if traces is not None else None
    if traces is None:
        return int(pick("iterations")), None
    waves = waves_for(int(traces), first, thinkers)
    if options.iterations is not None and options.iterations != waves:
        raise ValueError(
            f"give trace_budget or iterations, not both: {traces} traces (a first wave of {first}, then waves of "
            f"{thinkers}) take {waves} iterations, not {options.iterations}"
        )
    if waves > MAX_ITERATIONS:
        raise ValueError(f"trace_budget {traces} takes {waves} iterations, more than {MAX_ITERATIONS}")
    return waves, int(traces)


def selection_options(options: RunOptions, strategy: Any, final: FinalRule, table: PromptTable) -> dict[str, Any]:
    """The thinker-selection, confidence, TRT and DeepConf parameters: the prompt set's or the strategy's
    defaults filled in, and the combinations checked (``verifier`` needs a verifier prompt, ``manager`` a
    manager prompt, ``conf-vote`` a DeepConf measure, a measure needs top log-probabilities). Options a
    strategy does not use are checked but have no effect."""
    rule = options.select_rule or getattr(table.rules, "select_rule", None) or strategy.select_rule
    if rule == "verifier" and not strategy.verifies:
        raise ValueError(f"select_rule verifier needs a strategy with a verifier prompt (trt), not {strategy.name}")
    if rule == "manager" and not strategy.manages:
        raise ValueError(f"select_rule manager needs a strategy with a manager prompt (trt), not {strategy.name}")
    if rule == "manager" and not table.has("manage"):
        raise ValueError(
            f"select_rule manager needs a 'manage' template in {table.label} of prompt set {table.set_name!r}"
        )
    score = options.confidence_score or strategy.confidence_score
    if rule == "conf-vote" and score not in MEASURES:
        raise ValueError(
            f"select_rule conf-vote weighs votes by a DeepConf measure: set confidence_score to one of "
            f"{', '.join(MEASURES)} (got {score})"
        )
    if options.aggregation_pick == "confidence" and strategy.name == "rsa" and score not in MEASURES:
        raise ValueError(
            f"aggregation_pick confidence draws traces by a DeepConf measure: set confidence_score to one of "
            f"{', '.join(MEASURES)} (got {score})"
        )
    uses_measures = score in MEASURES or isinstance(final, ConfVote) or strategy.name == "deepconf"
    top = options.top_logprobs
    if top is None:
        top = DEFAULT_TOP_LOGPROBS if uses_measures else 0
    if uses_measures and top == 0:
        raise ValueError("DeepConf measures need top_logprobs >= 1 (20 in the paper)")
    return {
        "select_rule": rule,
        "confidence_score": score,
        "top_logprobs": top,
        "confidence_window": options.confidence_window,
        "show_reference": options.show_reference,
        "warmup_traces": options.warmup_traces,
        "confidence_keep": options.confidence_keep,
    }


def recursion_limit(iterations: int) -> int:
    """Graph steps a run of `iterations` rollouts takes (prepare, a planning step, then at most 6 per
    iteration: solve, extract_answer, verify, distill_knowledge, stop_check, reflect), with slack."""
    return 6 * iterations + 16
