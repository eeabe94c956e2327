"""Prompt sets: TOML files whose values are Jinja2 templates, plus the rules that go with them.

A prompt set holds one table per strategy. The top level is the `knowledge-flow` table (keys ``system``,
``first``, ``later``, ``prefill_first``, ``prefill_later`` and a ``[rules]`` table); other strategies have
tables of their own (``[regeneration]``, ``[regeneration.rules]``, ...). Each strategy declares, in a
`PromptSpec`, the keys it reads, the variables its templates may use and the model of its rules; a set is
checked against the spec of the strategy a run uses before anything is sent or written.

A set is identified by its name and the SHA-256 of its text: a run records both, and keeps the text itself
in its database, so a resumed run renders exactly what it rendered before, whatever happened to the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Template, meta
from pydantic import BaseModel, ValidationError

from knowledge_flow.prompts.bounds import TemplateFailure, guarded, render_bounded
from knowledge_flow.prompts.environment import environment
from knowledge_flow.records import ModelFamily
from knowledge_flow.user_files import MAX_PROMPT_SET_BYTES, UserFileError, read_text

#: Keys of the top level that describe the set rather than a strategy.
META_KEYS = frozenset({"name", "description", "follows"})
RULES = "rules"
BUILTIN_PACKAGE = "knowledge_flow.prompts.builtin"
#: The built-in set each model family uses unless a run names another.
DEFAULT_SETS: dict[ModelFamily, str] = {"gpt-oss": "kf-gpt-oss", "qwen3-thinking": "kf-qwen", "instruct": "kf-instruct"}


class PromptSetError(ValueError):
    """A prompt set that cannot be used; the message says why."""


@dataclass(frozen=True)
class PromptSpec:
    """What a strategy reads from a prompt set."""

    table: str | None
    """Its table, or None for the top level (knowledge-flow)."""
    required: tuple[str, ...]
    optional: tuple[str, ...]
    variables: frozenset[str]
    """Names its templates may use."""
    rules: type[BaseModel]
    """The model of its ``rules`` table (every field has a default)."""

    @property
    def label(self) -> str:
        return f"[{self.table}]" if self.table else "the top level"


@dataclass(frozen=True)
class PromptTable:
    """One strategy's compiled templates and validated rules."""

    set_name: str
    label: str
    templates: dict[str, Template]
    rules: Any
    uses: dict[str, frozenset[str]] = field(default_factory=dict)
    """Per template, the variables it uses."""

    def has(self, key: str) -> bool:
        return key in self.templates

    def render(self, key: str, **variables: Any) -> str:
        """The template `key` rendered, within the bounds of `knowledge_flow.prompts.bounds`."""
        template = self.templates.get(key)
        if template is None:
            raise PromptSetError(f"prompt set {self.set_name!r} has no {key!r} in {self.label}")
        try:
            return guarded(lambda: render_bounded(template.generate(**variables)))
        except TemplateFailure as exc:
            raise PromptSetError(f"prompt set {self.set_name!r}, {key!r} in {self.label}: {exc}") from None

    def render_optional(self, key: str, **variables: Any) -> str | None:
        """The rendered text, or None when the key is absent or renders empty."""
        return (self.render(key, **variables) or None) if self.has(key) else None


@dataclass(frozen=True)
class PromptSet:
    name: str
    source: str
    """The TOML text."""
    origin: str
    """``built-in`` or the file it was read from."""
    data: dict[str, Any] = field(repr=False)

    @property
    def digest(self) -> str:
        return digest_of(self.source)

    def has_table(self, spec: PromptSpec) -> bool:
        if spec.table is None:
            return any(key in self.data for key in spec.required)
        return isinstance(self.data.get(spec.table), dict)

    def table(self, spec: PromptSpec) -> PromptTable:
        return _compile(self, spec)


def digest_of(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=256)
def _compile_cached(source: str, name: str, spec: PromptSpec) -> PromptTable:
    data = tomllib.loads(source)
    raw = data if spec.table is None else data.get(spec.table)
    if not isinstance(raw, dict):
        raise PromptSetError(f"prompt set {name!r} has no [{spec.table}] table")
    allowed = set(spec.required) | set(spec.optional) | {RULES}
    if spec.table is None:
        allowed |= META_KEYS
    entries = {k: v for k, v in raw.items() if not (spec.table is None and isinstance(v, dict) and k != RULES)}
    unknown = sorted(set(entries) - allowed)
    if unknown:
        raise PromptSetError(
            f"prompt set {name!r}: unknown key(s) {', '.join(unknown)} in {spec.label} "
            f"(allowed: {', '.join(sorted(allowed - META_KEYS))})"
        )
    missing = [key for key in spec.required if key not in entries]
    if missing:
        raise PromptSetError(f"prompt set {name!r}: {spec.label} needs {', '.join(missing)}")
    templates: dict[str, Template] = {}
    uses: dict[str, frozenset[str]] = {}
    for key in (*spec.required, *spec.optional):
        if key not in entries:
            continue
        text = entries[key]
        if not isinstance(text, str):
            raise PromptSetError(f"prompt set {name!r}: {key!r} in {spec.label} must be a string")
        try:
            used, templates[key] = guarded(partial(_compile_template, text))
        except TemplateFailure as exc:
            raise PromptSetError(
                f"prompt set {name!r}: {key!r} in {spec.label} is not a valid template: {exc}"
            ) from None
        uses[key] = frozenset(used)
        unknown_vars = sorted(used - spec.variables)
        if unknown_vars:
            raise PromptSetError(
                f"prompt set {name!r}: {key!r} in {spec.label} uses unknown variable(s) {', '.join(unknown_vars)} "
                f"(available: {', '.join(sorted(spec.variables))})"
            )
    rules_data = entries.get(RULES, {})
    if not isinstance(rules_data, dict):
        raise PromptSetError(f"prompt set {name!r}: rules in {spec.label} must be a table")
    try:
        rules = spec.rules.model_validate(rules_data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise PromptSetError(f"prompt set {name!r}: rules in {spec.label}: {problems}") from None
    return PromptTable(name, spec.label, templates, rules, uses)


def _compile_template(text: str) -> tuple[set[str], Template]:
    """The names a template uses and the template (compiled within the bounds)."""
    env = environment()
    parsed = env.parse(text)
    return meta.find_undeclared_variables(parsed), env.from_string(parsed)


def _compile(prompt_set: PromptSet, spec: PromptSpec) -> PromptTable:
    return _compile_cached(prompt_set.source, prompt_set.name, spec)


@dataclass(frozen=True)
class Derived:
    """A built-in set made from another one's text: the same templates, with some top-level rules left out (so
    that the strategy's defaults apply)."""

    base: str
    drop_rules: tuple[str, ...]
    description: str


#: kf-instruct-paper: kf-instruct without its guard, i.e. with the paper's knowledge-flow rules (the defaults of
#: `strategies.knowledge_flow.KnowledgeFlowRules`).
DERIVED: dict[str, Derived] = {
    "kf-instruct-paper": Derived(
        "kf-instruct",
        (
            "reference_rule",
            "list_rule",
            "independent_on_tie",
            "reference_min_votes",
            "independent_every",
            "final_answer",
        ),
        "kf-instruct with the paper's knowledge-flow rules: every changed answer becomes the reference and is listed "
        "(no guard), the final answer is the last one.",
    )
}


def builtin_names() -> list[str]:
    folder = resources.files(BUILTIN_PACKAGE)
    files = [entry.name.removesuffix(".toml") for entry in folder.iterdir() if entry.name.endswith(".toml")]
    return sorted([*files, *DERIVED])


def with_rules(source: str, name: str, rules: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> str:
    """`source` renamed to `name`, its top-level ``[rules]`` table without the keys in `drop` and with `rules` set
    (TOML values); the rest of the text as it is."""
    lines = source.splitlines()
    start = lines.index("[rules]")
    end = start + 1
    while end < len(lines) and not lines[end].startswith("["):
        end += 1
    replaced = {*drop, *(rules or {})}

    def key_of(line: str) -> str | None:
        match = re.match(r"^\s*(\w+)\s*=", line)
        return match.group(1) if match else None

    kept = [line for line in lines[start + 1 : end] if key_of(line) not in replaced]
    added = [f"{key} = {json.dumps(value)}" for key, value in (rules or {}).items()]
    text = "\n".join([*lines[:start], "[rules]", *added, *kept, *lines[end:]]) + "\n"
    return re.sub(r'^name = ".*"$', f'name = "{name}"', text, count=1, flags=re.M)


def parse(source: str, origin: str, default_name: str) -> PromptSet:
    try:
        data = tomllib.loads(source)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # nesting deeper than the parser's stack
        raise PromptSetError(f"prompt set {origin} is not valid TOML: {exc or 'nested too deeply'}") from None
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise PromptSetError(f"prompt set {origin}: 'name' must be a non-empty string")
    return PromptSet(name=name.strip(), source=source, origin=origin, data=data)


@functools.lru_cache(maxsize=32)
def _builtin(name: str) -> PromptSet:
    derived = DERIVED.get(name)
    if derived is not None:
        source = with_rules(_builtin(derived.base).source, name, drop=derived.drop_rules)
        source = re.sub(
            r'^description = ".*"$', f"description = {json.dumps(derived.description)}", source, count=1, flags=re.M
        )
        return parse(source, "built-in", name)
    source = resources.files(BUILTIN_PACKAGE).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse(source, "built-in", name)


def load_prompt_set(spec: str) -> PromptSet:
    """A built-in set by name, or a TOML file by path."""
    if spec in builtin_names():
        return _builtin(spec)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".toml" or path.exists():
        try:
            source = read_text(path, MAX_PROMPT_SET_BYTES, "prompt set")
        except UserFileError as exc:
            raise PromptSetError(str(exc)) from None
        return parse(source, str(path.resolve()), path.stem)
    raise PromptSetError(
        f"unknown prompt set {spec!r}: give a built-in name ({', '.join(builtin_names())}) or a .toml file"
    )


def from_source(source: str, name: str) -> PromptSet:
    """A set from its stored text (a run's database keeps the text it started with)."""
    return parse(source, "stored", name)
