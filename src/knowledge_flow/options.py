"""Every run option, defined once: name, type, default, bounds, help text, command-line flag, and whether it
may change when a run is resumed.

From `RunOptions` derive: the graph's input schema (what Studio's input form and ``graph.invoke`` accept,
with descriptions and defaults), the validation in `prepare` and before anything is written
(`knowledge_flow.params.resolve_run`), and the run options of ``kflow solve`` and ``kflow eval``
(`knowledge_flow.cli` builds them from the fields). A new option is one field here plus its use.

Options whose default depends on others are ``None`` by default and resolved by `resolve_run` (the model's
family picks the prompt set and reasoning effort, the strategy its final-answer rule, `thinkers` the number
kept, the temperature the thinkers' range). An option a strategy may default differently (its `defaults`, e.g.
deepconf's budget) is ``None`` here too, with the run's own default as its `fallback`; the help texts of the
command line and Studio list both (`knowledge_flow.strategies.default_text`).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, model_validator
from pydantic.fields import FieldInfo

AnswerType = Literal["integer", "latex", "text"]
ModelFamily = Literal["gpt-oss", "qwen3-thinking", "instruct"]
ReasoningEffort = Literal["low", "medium", "high"]
SelectRule = Literal["confidence", "vote", "conf-vote", "verifier", "manager", "genselect"]
AggregationPick = Literal["uniform", "confidence"]
ConfidenceScore = Literal["mean-logprob", "lowest", "bottom10", "tail", "mean"]
OnResume = Literal["fixed", "extend"]
"""``fixed``: a resumed run keeps its value (giving another is refused); ``extend``: a larger value extends
the run (iterations: the rollouts already paid for are kept)."""

MAX_ITERATIONS = 10_000
MAX_THINKERS = 64
#: Largest top-k of log-probabilities a server returns (vLLM's default --max-logprobs).
MAX_TOP_LOGPROBS = 20
MAX_WARMUP_TRACES = 512
#: Seeds of one iteration's rollouts are `seed + SEED_STRIDE * iteration + thinker`: more than any iteration's
#: rollouts (thinkers, or a warm-up wave), so no two rollouts of a run share a seed.
SEED_STRIDE = 1024
MAX_TRACE_BUDGET = 100_000
#: DeepConf's group size in tokens, and the candidates per position its measures need (the paper's values).
DEFAULT_WINDOW = 2048
DEFAULT_TOP_LOGPROBS = 20


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


#: Bounds of ``extra_body``: its size as JSON, and how deeply its values nest.
MAX_EXTRA_BODY_BYTES = 64 * 1024
MAX_EXTRA_BODY_DEPTH = 32


def _no_constant(name: str) -> Any:
    raise ValueError(f"must not hold {name} (not JSON)")


def _check_json_value(value: Any) -> None:
    """Refuse a value nested deeper than `MAX_EXTRA_BODY_DEPTH` or holding a float that is not finite
    (iteratively: a value built in Python may nest deeper than the interpreter recurses)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > MAX_EXTRA_BODY_DEPTH:
                raise ValueError(f"must nest at most {MAX_EXTRA_BODY_DEPTH} levels deep")
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"must not hold {item} (not JSON)")


def _json_object(value: Any) -> Any:
    """A JSON object given as text (or as a value), within the bounds above."""
    if isinstance(value, str):
        if len(value.encode("utf-8", "surrogatepass")) > MAX_EXTRA_BODY_BYTES:
            raise ValueError(f"must be at most {MAX_EXTRA_BODY_BYTES:,} bytes of JSON")
        try:
            value = json.loads(value, parse_constant=_no_constant)
        except RecursionError:
            raise ValueError(f"must nest at most {MAX_EXTRA_BODY_DEPTH} levels deep") from None
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if message.startswith("must") else f"must be a JSON object: {exc}") from None
    if value is not None:
        _check_json_value(value)
        if len(json.dumps(value)) > MAX_EXTRA_BODY_BYTES:
            raise ValueError(f"must be at most {MAX_EXTRA_BODY_BYTES:,} bytes of JSON")
    return value


Number = BeforeValidator(_not_bool)


def option(
    default: Any,
    description: str,
    *,
    flag: str | None = None,
    on_resume: OnResume = "fixed",
    fallback: Any = None,
    **constraints: Any,
) -> Any:
    """A run option's field: its help text, command-line flag (default ``--name-with-dashes``), resume rule, and
    for an option a strategy may default differently, the run's own default (`fallback`)."""
    extra: dict[str, Any] = {"on_resume": on_resume}
    if flag:
        extra["flag"] = flag
    if fallback is not None:
        extra["fallback"] = fallback
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class RunOptions(BaseModel):
    """The options of one run (a problem's rollouts). Everything a run needs to continue after a crash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = option(None, "Served model name (env KFLOW_MODEL; default: the embedded model).")
    iterations: Annotated[int | None, Number] = option(
        None,
        "Rollouts (iterations) to run (64 in the original runs; with a trace budget, as many as it needs).",
        ge=1,
        le=MAX_ITERATIONS,
        on_resume="extend",
        fallback=64,
    )
    max_new_tokens: Annotated[int | None, Number] = option(
        None,
        "Tokens per rollout before the prompt set's fraction and the served context's limit (gpt-oss: 131072).",
        ge=1,
        le=10**7,
        fallback=512,
    )
    temperature: Annotated[float, Number] = option(0.6, "Sampling temperature.", ge=0.0, le=2.0)
    seed: Annotated[int | None, Number] = option(
        None,
        "Sampling seed: rollout k of thinker i is sampled with seed + 1024 k + i (vLLM and llama.cpp honour it; "
        "default: none sent).",
        ge=0,
        le=2**31 - 1,
    )
    top_p: Annotated[float | None, Number] = option(
        None, "Nucleus sampling (always sent).", ge=0.0, le=1.0, fallback=1.0
    )
    top_k: Annotated[int, Number] = option(-1, "Top-k sampling; -1 for none (always sent).", ge=-1, le=10**6)
    min_p: Annotated[float, Number] = option(0.0, "Min-p sampling; 0 for none (always sent).", ge=0.0, le=1.0)
    repetition_penalty: Annotated[float, Number] = option(
        1.0, "Repetition penalty; 1 for none (always sent).", ge=0.01, le=10.0
    )
    extra_body: Annotated[dict[str, Any] | None, BeforeValidator(_json_object)] = option(
        None, "JSON object of extra request fields, e.g. vLLM's structured_outputs or chat_template_kwargs."
    )
    strategy: str = option("knowledge-flow", "Strategy (see `kflow --help` for the list).", min_length=1)
    answer_type: AnswerType | None = option(
        None, "integer, latex or text (default: integer; kflow eval: the dataset's)."
    )
    prompts: str | None = option(
        None, "Prompt set: a built-in name (kflow prompts list) or a .toml file (default: the model family's)."
    )
    prefill: str | None = option(
        None, "Assistant prefill for every rollout, overriding the prompt set's (continued by the server)."
    )
    model_family: ModelFamily | None = option(
        None, "gpt-oss, qwen3-thinking or instruct (default: from the model name)."
    )
    reasoning_effort: ReasoningEffort | None = option(None, "gpt-oss reasoning effort (default: high for gpt-oss).")
    knowledge_budget_tokens: Annotated[int, Number] = option(
        8192, "Tokens of the knowledge list in a prompt.", flag="--knowledge-budget", ge=0, le=10**7
    )
    avoid_budget_tokens: Annotated[int | None, Number] = option(
        None,
        "regeneration: tokens of the Things to Avoid list (default: the prompt set's rule).",
        flag="--avoid-budget",
        ge=1,
        le=10**7,
    )
    stop_policy: str | None = option(
        None,
        "fixed (the whole budget), stable:K (K same answers, no report) or consensus:TAU[:N] (a confidence-"
        "weighted vote share of TAU over at least N traces); default: the strategy's (deepconf consensus:0.95).",
    )
    final_answer_rule: str | None = option(
        None,
        "last, majority:W (W or 'all'), conf-vote:MEASURE[:ETA] (a confidence-weighted vote over every trace) or "
        "majority-traces (one vote per trace: the DeepConf reference code's final_answer) or genselect (one call "
        "picks among the last population (rsa) or every trace); default: the strategy's (self-consistency: "
        "majority:all, deepconf: conf-vote:lowest, rsa: last, the majority of the last population).",
        flag="--final-answer",
    )
    thinkers: Annotated[int | None, Number] = option(
        None, "Parallel rollouts per iteration.", ge=1, le=MAX_THINKERS, fallback=1
    )
    trace_budget: Annotated[int | None, Number] = option(
        None,
        "Traces (rollouts) to sample in all, a first wave such as deepconf's warm-up included: the iterations "
        "follow from it and the last wave is trimmed so that exactly this many are sent, unless the stop policy "
        "ends the run earlier (256: DeepConf's online budget; 512: its offline one).",
        ge=1,
        le=MAX_TRACE_BUDGET,
    )
    topk_thinkers: Annotated[int | None, Number] = option(
        None, "Thinkers kept per iteration (default: all).", ge=1, le=MAX_THINKERS
    )
    min_temperature: Annotated[float | None, Number] = option(
        None, "Lowest thinker temperature (default: the temperature).", ge=0.0, le=2.0
    )
    max_temperature: Annotated[float | None, Number] = option(
        None, "Highest thinker temperature (default: the temperature).", ge=0.0, le=2.0
    )
    diversity_weight: Annotated[float, Number] = option(
        0.0, "Penalty on kept thinkers similar to those kept before.", ge=0.0, le=100.0
    )
    dynamic_temperature: StrictBool = option(
        False, "Adapt the thinkers' temperature spread to agreement and confidence."
    )
    uncertainty_threshold: Annotated[float | None, Number] = option(
        None, "Below this mean log-probability the reference solution is not replaced.", ge=-1e9, le=0.0
    )
    select_rule: SelectRule | None = option(
        None,
        "How the iteration's answer is chosen among its thinkers: confidence, vote, conf-vote, verifier or manager "
        "(trt), or genselect (one call picks among the thinkers' final texts); default: the prompt set's, else the "
        "strategy's (confidence; trt: manager with kf-qwen and kf-gpt-oss, else vote; deepconf conf-vote; rsa "
        "vote).",
    )
    confidence_score: ConfidenceScore | None = option(
        None,
        "A thinker's score: mean-logprob or a DeepConf measure (lowest, bottom10, tail, mean); default: the "
        "strategy's (deepconf lowest).",
    )
    top_logprobs: Annotated[int | None, Number] = option(
        None,
        "k of DeepConf's token confidence, minus the mean log-probability of the k most likely tokens (default "
        "20 when a measure is used, else 0); k + 1 are requested, which exposes the exact top k.",
        ge=0,
        le=MAX_TOP_LOGPROBS,
    )
    confidence_window: Annotated[int, Number] = option(
        DEFAULT_WINDOW, "DeepConf's group size in tokens.", ge=1, le=10**7
    )
    show_reference: StrictBool = option(False, "trt: rollouts see the current best (selected) solution.")
    warmup_traces: Annotated[int, Number] = option(
        16, "deepconf: traces of the warm-up wave that sets the online threshold.", ge=1, le=MAX_WARMUP_TRACES
    )
    confidence_keep: Annotated[float, Number] = option(
        90.0,
        "deepconf: percent of warm-up-like traces the online threshold keeps: 90 is DeepConf-high (the threshold "
        "is the 10th percentile of the warm-up traces' lowest group confidence), 10 is DeepConf-low (the 90th).",
        gt=0.0,
        le=100.0,
    )

    aggregation_size: Annotated[int, Number] = option(
        4,
        "rsa: K, the traces of the previous loop each member aggregates (1: self-refinement; at most thinkers).",
        ge=1,
        le=MAX_THINKERS,
    )
    aggregation_pick: AggregationPick = option(
        "uniform",
        "rsa: how each member's K traces are drawn from the previous loop: uniform (the paper) or confidence "
        "(with probability proportional to the confidence_score, a DeepConf measure).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RunOptions:
        if self.model is not None and not self.model.strip():
            raise ValueError("model must not be empty")
        if self.topk_thinkers is not None and self.thinkers is not None and self.topk_thinkers > self.thinkers:
            raise ValueError(f"topk_thinkers ({self.topk_thinkers}) cannot exceed thinkers ({self.thinkers})")
        low, high = self.min_temperature, self.max_temperature
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_temperature ({low}) cannot exceed max_temperature ({high})")
        return self


OPTION_NAMES: tuple[str, ...] = tuple(RunOptions.model_fields)


def field_info(name: str) -> FieldInfo:
    return RunOptions.model_fields[name]


def extra_of(name: str) -> dict[str, Any]:
    extra = field_info(name).json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def flag_of(name: str) -> str:
    return str(extra_of(name).get("flag") or "--" + name.replace("_", "-"))


def fallback_of(name: str) -> Any:
    """The run's own default of an option a strategy may default differently (None when there is none)."""
    return extra_of(name).get("fallback")


def on_resume(name: str) -> OnResume:
    value = extra_of(name).get("on_resume", "fixed")
    return "extend" if value == "extend" else "fixed"


def choices_of(name: str) -> tuple[str, ...]:
    """The allowed values of a Literal option (empty for others)."""
    annotation = field_info(name).annotation
    for arg in (annotation, *get_args(annotation)):
        values = get_args(arg)
        if values and all(isinstance(v, str) for v in values) and getattr(arg, "__origin__", None) is Literal:
            return tuple(values)
    return ()


def _message(error: Any) -> str:
    """One line a user can act on, for a pydantic error."""
    name = ".".join(str(part) for part in error.get("loc", ())) or "options"
    kind, value, context = error.get("type", ""), error.get("input"), error.get("ctx") or {}
    if name in RunOptions.model_fields and kind in ("greater_than_equal", "less_than_equal", "greater_than"):
        bounds = {type(m).__name__: m for m in field_info(name).metadata}
        low = getattr(bounds.get("Ge"), "ge", None)
        if low is None:
            low = getattr(bounds.get("Gt"), "gt", None)
        high = getattr(bounds.get("Le"), "le", None)
        return f"{name} must be between {low:g} and {high:g}, got {value!r}"
    if kind == "int_from_float":
        return f"{name} must be a whole number, got {value!r}"
    if kind in ("int_parsing", "float_parsing", "int_type", "float_type"):
        return f"{name} must be a number, got {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{name} must be true or false, got {value!r}"
    if kind == "literal_error":
        return f"{name} must be one of {context.get('expected', '')}, got {value!r}"
    if kind == "extra_forbidden":
        return f"unknown option {name!r}"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if name == "options" or message.startswith(name):
        return message
    return f"{name} {message}" if message.startswith("must") else f"{name}: {message}"


def parse_options(given: dict[str, Any]) -> RunOptions:
    """The options given (None meaning "not given"), validated; ValueError with a one-line message."""
    try:
        return RunOptions.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise ValueError(_message(exc.errors()[0])) from None
