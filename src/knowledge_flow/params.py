"""Run parameters: defaults and validation (shared by the graph's `prepare` node and the CLI)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, get_args

from knowledge_flow.confidence import DEFAULT_TOP_LOGPROBS, DEFAULT_WINDOW, MEASURES
from knowledge_flow.policies import ConfVote, Consensus, parse_final_answer_rule, parse_stop_policy
from knowledge_flow.prompts import DEFAULT_SETS, PromptSet, load_prompt_set
from knowledge_flow.state import AnswerType, ConfidenceScore, ModelFamily, RunParams, SelectRule

LOCAL_MODEL_ALIAS = "qwen2.5-coder-0.5b-instruct"

#: The original method runs 64 rollouts (`reflex_size`) at temperature 0.6.
DEFAULT_ITERATIONS = 64
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 1.0
#: No top-k, no min-p, no repetition penalty: the original scripts' sampling (vLLM's SamplingParams defaults).
DEFAULT_TOP_K = -1
DEFAULT_MIN_P = 0.0
DEFAULT_REPETITION_PENALTY = 1.0
#: Small enough for the embedded CPU model; raise it for reasoning models (131072 for gpt-oss).
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_STRATEGY = "knowledge-flow"
DEFAULT_KNOWLEDGE_BUDGET = 8192
MAX_ITERATIONS = 10_000

PARAM_KEYS: tuple[str, ...] = (
    "model",
    "iterations",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "extra_body",
    "max_new_tokens",
    "strategy",
    "answer_type",
    "knowledge_budget_tokens",
    "prefill",
    "prompts",
    "model_family",
    "reasoning_effort",
    "stop_policy",
    "final_answer_rule",
    "thinkers",
    "topk_thinkers",
    "min_temperature",
    "max_temperature",
    "diversity_weight",
    "dynamic_temperature",
    "uncertainty_threshold",
    "avoid_budget_tokens",
    *(
        "select_rule",
        "confidence_score",
        "top_logprobs",
        "confidence_window",
        "show_reference",
        "warmup_traces",
        "confidence_keep",
    ),
)
MAX_THINKERS = 64
REASONING_EFFORTS = ("low", "medium", "high")


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


def _number(name: str, value: Any, kind: type[int] | type[float], low: float, high: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is int and (not isinstance(value, int) and not float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return kind(value)


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
        "continue_final_message",
        "add_generation_prompt",
        "seed",
    }
)


def check_extra_body(value: Any) -> dict[str, Any] | None:
    """A JSON object of extra request fields, without the fields the run's options already set."""
    if value is None or value == {}:
        return None
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"extra_body must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("extra_body must be a JSON object")
    clashes = sorted(OWN_REQUEST_FIELDS & set(value))
    if clashes:
        raise ValueError(f"extra_body may not set {', '.join(clashes)}: the run's own options set them")
    return value


#: Largest top-k of log-probabilities a server returns (vLLM's default --max-logprobs).
MAX_TOP_LOGPROBS = 20
DEFAULT_WARMUP_TRACES = 16
MAX_WARMUP_TRACES = 512
DEFAULT_CONFIDENCE_KEEP = 90.0


def resolve_selection_options(
    given: Mapping[str, Any], strategy: Any, final_rule: str, stop_policy: str
) -> dict[str, Any]:
    """The run options of thinker selection, confidence measures, TRT and DeepConf, validated.

    - ``select_rule`` (str; the strategy's default: ``confidence``; trt ``vote``; deepconf ``conf-vote``):
      how the iteration's answer is chosen among its thinkers (see `knowledge_flow.thinkers`); ``verifier``
      only for strategies with a verifier prompt (trt).
    - ``confidence_score`` (str; ``mean-logprob``, deepconf ``lowest``): a thinker's score, the mean sampled
      token log-probability or a DeepConf measure (``lowest``, ``bottom10``, ``tail``, ``mean``).
      ``conf-vote`` needs a DeepConf measure.
    - ``top_logprobs`` (int, 0..20; default 20 when a DeepConf measure is used by the score, the select
      rule, the final-answer rule ``conf-vote`` or the deepconf strategy, else 0): candidates per position
      requested from the server.
    - ``confidence_window`` (int >= 1; 2048): DeepConf's group size in tokens.
    - ``show_reference`` (bool; False): trt rollouts see the current best (selected) solution.
    - ``warmup_traces`` (int, 1..512; 16): deepconf's warm-up wave (iteration 0), which sets the online
      threshold.
    - ``confidence_keep`` (float, 0 < keep <= 100; 90): deepconf's threshold is the ``100 - keep``
      percentile of the warm-up traces' lowest group confidence (90: DeepConf-high, 10: DeepConf-low).

    Options a strategy does not use are checked but have no effect.
    """

    def pick(key: str, default: Any) -> Any:
        value = given.get(key)
        return default if value is None else value

    rule = str(pick("select_rule", strategy.select_rule))
    rules = get_args(SelectRule)
    if rule not in rules:
        raise ValueError(f"select_rule must be one of {', '.join(rules)}, got {rule!r}")
    if rule == "verifier" and not strategy.verifies:
        raise ValueError(f"select_rule verifier needs a strategy with a verifier prompt (trt), not {strategy.name}")
    score = str(pick("confidence_score", strategy.confidence_score))
    scores = get_args(ConfidenceScore)
    if score not in scores:
        raise ValueError(f"confidence_score must be one of {', '.join(scores)}, got {score!r}")
    if rule == "conf-vote" and score not in MEASURES:
        raise ValueError(
            f"select_rule conf-vote weighs votes by a DeepConf measure: set confidence_score to one of "
            f"{', '.join(MEASURES)} (got {score})"
        )
    uses_measures = (
        score in MEASURES
        or isinstance(parse_final_answer_rule(final_rule), ConfVote)
        or strategy.name == "deepconf"
        or (isinstance(parse_stop_policy(stop_policy), Consensus) and final_rule.startswith("conf-vote"))
    )
    top = _number(
        "top_logprobs", pick("top_logprobs", DEFAULT_TOP_LOGPROBS if uses_measures else 0), int, 0, MAX_TOP_LOGPROBS
    )
    if uses_measures and top == 0:
        raise ValueError("DeepConf measures need top_logprobs >= 1 (20 in the paper)")
    show = pick("show_reference", False)
    if not isinstance(show, bool):
        raise ValueError(f"show_reference must be true or false, got {show!r}")
    return {
        "select_rule": rule,
        "confidence_score": score,
        "top_logprobs": top,
        "confidence_window": _number("confidence_window", pick("confidence_window", DEFAULT_WINDOW), int, 1, 10**7),
        "show_reference": show,
        "warmup_traces": _number(
            "warmup_traces", pick("warmup_traces", DEFAULT_WARMUP_TRACES), int, 1, MAX_WARMUP_TRACES
        ),
        "confidence_keep": _number(
            "confidence_keep", pick("confidence_keep", DEFAULT_CONFIDENCE_KEEP), float, 1e-9, 100.0
        ),
    }


def resolve_params(given: Mapping[str, Any]) -> RunParams:
    """Fill defaults and validate. Raises ValueError with a message meant for the user."""
    return resolve_run(given)[0]


def resolve_run(given: Mapping[str, Any]) -> tuple[RunParams, PromptSet]:
    """The run's parameters and its prompt set (checked against the strategy's table). Raises ValueError
    with a message meant for the user."""
    from knowledge_flow.strategies import get_strategy

    def pick(key: str, default: Any) -> Any:
        value = given.get(key)
        return default if value is None else value

    answer_type = pick("answer_type", "integer")
    if answer_type not in get_args(AnswerType):
        raise ValueError(f"answer_type must be one of {', '.join(get_args(AnswerType))}, got {answer_type!r}")
    strategy = str(pick("strategy", DEFAULT_STRATEGY))
    chosen = get_strategy(strategy)
    model = str(pick("model", default_model())).strip()
    if not model:
        raise ValueError("model must not be empty")
    prefill = given.get("prefill")
    if prefill is not None and not isinstance(prefill, str):
        raise ValueError("prefill must be a string")
    family = pick("model_family", None) or detect_model_family(model)
    if family not in get_args(ModelFamily):
        raise ValueError(f"model_family must be one of {', '.join(get_args(ModelFamily))}, got {family!r}")
    effort = given.get("reasoning_effort")
    if effort is None and family == "gpt-oss":
        effort = "high"
    if effort is not None and effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, got {effort!r}")
    stop_policy = str(pick("stop_policy", chosen.stop_policy))
    parse_stop_policy(stop_policy)
    final_rule = str(pick("final_answer_rule", chosen.final_answer_rule))
    parse_final_answer_rule(final_rule)
    prompts_given = pick("prompts", DEFAULT_SETS[family])
    if not isinstance(prompts_given, str) or not prompts_given.strip():
        raise ValueError("prompts must be a built-in prompt set name or a .toml file")
    prompt_set = load_prompt_set(prompts_given.strip())
    prompt_set.table(chosen.spec)  # the strategy's table must be there and valid
    extra_body = check_extra_body(given.get("extra_body"))
    avoid_budget = given.get("avoid_budget_tokens")
    if avoid_budget is not None:
        avoid_budget = _number("avoid_budget_tokens", avoid_budget, int, 1, 10**7)
    temperature = _number("temperature", pick("temperature", DEFAULT_TEMPERATURE), float, 0.0, 2.0)
    thinkers = _number("thinkers", pick("thinkers", chosen.default_thinkers), int, 1, MAX_THINKERS)
    topk = _number("topk_thinkers", pick("topk_thinkers", thinkers), int, 1, MAX_THINKERS)
    if topk > thinkers:
        raise ValueError(f"topk_thinkers ({topk}) cannot exceed thinkers ({thinkers})")
    low = _number("min_temperature", pick("min_temperature", temperature), float, 0.0, 2.0)
    high = _number("max_temperature", pick("max_temperature", max(low, temperature)), float, 0.0, 2.0)
    if low > high:
        raise ValueError(f"min_temperature ({low}) cannot exceed max_temperature ({high})")
    threshold = given.get("uncertainty_threshold")
    if threshold is not None:
        threshold = _number("uncertainty_threshold", threshold, float, -1e9, 0.0)
    max_new_tokens = _number("max_new_tokens", pick("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), int, 1, 10**7)
    top_k = _number("top_k", pick("top_k", DEFAULT_TOP_K), int, -1, 10**6)
    params = RunParams(
        model=model,
        iterations=_number(
            "iterations", pick("iterations", chosen.default_iterations or DEFAULT_ITERATIONS), int, 1, MAX_ITERATIONS
        ),
        temperature=temperature,
        top_p=_number("top_p", pick("top_p", DEFAULT_TOP_P), float, 0.0, 1.0),
        top_k=-1 if top_k == 0 else top_k,
        min_p=_number("min_p", pick("min_p", DEFAULT_MIN_P), float, 0.0, 1.0),
        repetition_penalty=_number(
            "repetition_penalty", pick("repetition_penalty", DEFAULT_REPETITION_PENALTY), float, 0.01, 10.0
        ),
        extra_body=extra_body,
        max_new_tokens=max_new_tokens,
        strategy=strategy,
        answer_type=answer_type,
        knowledge_budget_tokens=_number(
            "knowledge_budget_tokens", pick("knowledge_budget_tokens", DEFAULT_KNOWLEDGE_BUDGET), int, 0, 10**7
        ),
        prefill=prefill or None,
        prompts=prompts_given.strip(),
        prompt_set=prompt_set.name,
        prompt_hash=prompt_set.digest,
        model_family=family,
        reasoning_effort=effort,
        stop_policy=stop_policy,
        final_answer_rule=final_rule,
        thinkers=thinkers,
        topk_thinkers=topk,
        min_temperature=low,
        max_temperature=high,
        diversity_weight=_number("diversity_weight", pick("diversity_weight", 0.0), float, 0.0, 100.0),
        dynamic_temperature=bool(pick("dynamic_temperature", False)),
        uncertainty_threshold=threshold,
        avoid_budget_tokens=avoid_budget,
        **resolve_selection_options(given, chosen, final_rule, stop_policy),  # type: ignore[typeddict-item]
    )
    return params, prompt_set


def recursion_limit(iterations: int) -> int:
    """Graph steps a run of `iterations` rollouts takes (prepare, a planning step, then at most 6 per
    iteration: solve, extract_answer, verify, distill_knowledge, stop_check, reflect), with slack."""
    return 6 * iterations + 16
