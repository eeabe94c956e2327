"""Prompt templates cannot exhaust the machine: every costly operation is capped before it runs, recursion and
loops end, output is bounded, and every failure is one PromptSetError naming the template (fuzzed too)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knowledge_flow.params import resolve_params
from knowledge_flow.prompts import PromptSetError, from_source, load_prompt_set
from knowledge_flow.prompts import bounds as bounds_module
from knowledge_flow.prompts.bounds import MAX_CHARS
from knowledge_flow.strategies import STRATEGIES

BASE = load_prompt_set("kf-instruct").source


def with_first(expression: str) -> str:
    """kf-instruct whose first template starts with `expression` (TOML literal string: no escapes)."""
    return BASE.replace("first = '''\n{{ problem }}", "first = '''\n" + expression + "{{ problem }}", 1)


def render_first(expression: str) -> str:
    table = from_source(with_first(expression), "hostile").table(STRATEGIES["knowledge-flow"].spec)
    return table.render("first", problem="P", answer_slot="<integer>", iteration=0, reference=None, knowledge=[])


@pytest.fixture
def short_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(bounds_module, "CPU_SECONDS", 0.5)
    yield


HOSTILE = {
    "power": ("{{ 10 ** (10 ** 8) }}", "a power of"),
    "product": ("{% set a = 10 ** 1000 %}{{ a * a * a * a * a }}", "a product of"),
    "repetition": ("{{ 'x' * 10**8 }}", "a repetition of 100,000,000 characters"),
    "list repetition": ("{{ ([1] * 10**7) | length }}", "a repetition of 10,000,000 items"),
    "range": ("{{ range(10**9) | list }}", "an argument of 1,000,000,000"),
    "recursive macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "calls nest more than 100 deep"),
    "center filter": ("{{ 'x' | center(1000000000) }}", "an argument of 1,000,000,000"),
    "center method": ("{{ 'x'.center(10**9) }}", "an argument of 1,000,000,000"),
    "format width": ("{{ '{:>999999999}'.format(1) }}", "a format width of 999,999,999"),
    "percent width": ("{{ '%999999999s' % 'x' }}", "a format width of 999,999,999"),
    "percent star": ("{{ '%*s' % (999999999, 'x') }}", "an argument of 999,999,999"),
    "doubling concat": ("{% set a = 'x' * 1000000 %}{% set a = a ~ a %}{{ a }}", "more than 1,000,000 characters"),
    "doubling namespace": (
        "{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "more than 1,000,000 characters",
    ),
    "captured block": (
        "{% set s = 'y' * 1000000 %}{% set x %}{% for i in range(9) %}{{ s }}{% endfor %}{% endset %}",
        "more than 1,000,000 characters",
    ),
    "join filter": ("{% set s = 'y' * 1000000 %}{{ ([s] * 1000) | join }}", "more than 1,000,000 characters"),
    "join method": ("{% set s = 'y' * 1000000 %}{{ ''.join([s] * 1000) }}", "more than 1,000,000 characters"),
    "replace": ("{{ ('x' * 1000000).replace('x', 'xxxxxxxx') }}", "a replaced text of 8,000,000 characters"),
    "output": ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "rendered text is longer than 1,000,000"),
    "integer literal": ("{{ " + "9" * 5000 + " }}", "integer string conversion"),
    "deep nesting": ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nests too deeply"),
    "undefined attribute": ("{{ problem.nothing.here }}", "has no attribute 'nothing'"),
    "lipsum is gone": ("{{ lipsum(n=10**6) }}", "unknown variable(s) lipsum"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_costly_templates_are_refused_at_once(case: str) -> None:
    expression, message = HOSTILE[case]
    started = time.monotonic()
    with pytest.raises(PromptSetError) as caught:
        render_first(expression)
    text = str(caught.value)
    assert message in text, text
    assert "prompt set 'kf-instruct'" in text and "'first'" in text and "\n" not in text
    assert time.monotonic() - started < 3.0  # capped before it ran, not stopped by the time limit


TIMED = {
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "nested loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "growing list": "{% set l = [] %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{{ l.append(j) or '' }}{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("case", list(TIMED), ids=list(TIMED))
def test_long_renders_are_stopped_by_the_time_limit(case: str, short_limit: None) -> None:
    started = time.monotonic()
    with pytest.raises(PromptSetError, match=r"took more than 0\.5 s"):
        render_first(TIMED[case])
    assert time.monotonic() - started < 60  # CPU time: on a loaded machine the wall time is longer


def test_the_watchdog_leaves_nothing_behind(short_limit: None) -> None:
    """A render that ends just as its time runs out raises nowhere else: later code in the thread runs on."""
    for _ in range(30):
        assert render_first("{% for i in range(2000) %}{% endfor %}").startswith("P")
    with pytest.raises(PromptSetError):
        render_first(TIMED["nested loops"])
    total = 0
    for i in range(2_000_000):  # long after the stopped render: no stray exception lands here
        total += i
    assert total == sum(range(2_000_000))


def test_ordinary_templates_render_as_before() -> None:
    text = render_first(
        "{{ 'a' ~ 'b' }} {{ 2 ** 10 }} {{ '%5s' % 'x' }} {{ [1, 2] | join(',') }} {{ 'ab'.replace('a', 'c') }} "
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }} "
        "{{ 'x' | center(5) }}|{{ '{:>4}'.format(1) }}|{{ [1, 2, 3] | map('string') | join('-') }}|"
        "{{ 'abc' | replace('b', 'XX') }}|{{ '%s-%s' | format(1, 2) }}|"
    )
    assert text.startswith("ab 1024     x 1,2 cb 3   x  |   1|1-2-3|aXXc|1-2|P\n")
    near = MAX_CHARS - 1000  # the bound itself is allowed
    assert render_first(f"{{{{ 'y' * {near} }}}}")[:near] == "y" * near


def test_a_set_is_rendered_on_sample_states_before_a_run_starts(tmp_path: Path) -> None:
    """A template that fails only on a later iteration (a reference, a knowledge list) is refused by
    `resolve_params` before anything is written."""
    source = BASE.replace("{{ reference | strip_leading_colon", "{{ reference.nope | strip_leading_colon", 1)
    assert source != BASE
    assert from_source(source, "later-fails").table(STRATEGIES["knowledge-flow"].spec)  # it compiles ...
    path = tmp_path / "later.toml"
    path.write_text(source)
    with pytest.raises(ValueError, match=r"'later' in the top level: .*nope"):  # ... but cannot render
        resolve_params({"prompts": str(path)})
    with pytest.raises(ValueError, match=r"rendered text is longer"):  # the run's own problem is rendered
        resolve_params({"prompts": "kf-instruct", "problem": "z" * (MAX_CHARS + 1)})


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_built_in_set_passes_the_rehearsal(name: str) -> None:
    for prompts in ("kf-instruct", "kf-qwen", "kf-gpt-oss"):
        resolve_params({"prompts": prompts, "strategy": name})


PIECES = st.sampled_from(
    [
        "{{ problem }}",
        "{{ 10 ** ",
        "{{ 'x' * ",
        "{{ range(",
        "10 ** 9",
        "999999999",
        "7",
        ") }}",
        " }}",
        "{% for i in range(100000) %}",
        "{% endfor %}",
        "{% macro m(n) %}{{ m(n) }}{% endmacro %}",
        "{{ m(1) }}",
        "{% set s = 'ab' * 400000 %}",
        "{{ s ~ s ~ s }}",
        "{{ s | center(",
        "{{ '%*s' % (",
        ", 'x') }}",
        "|join }}",
        "{{ [s] * ",
        "{% if ",
        "{% endif %}",
        "(",
        ")",
        "~",
        "|",
        "{{",
        "}}",
    ]
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pieces=st.lists(PIECES, max_size=12))
def test_fuzzed_templates_render_or_fail_in_one_line(pieces: list[str], short_limit: None) -> None:
    expression = "".join(pieces).replace("'''", "")
    started = time.monotonic()
    try:
        text = render_first(expression)
    except PromptSetError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("prompt set ")
    else:
        assert len(text) <= MAX_CHARS
    assert time.monotonic() - started < 60
