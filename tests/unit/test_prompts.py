"""Prompt sets: the file format, the Jinja environment, the built-in sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge_flow.prompts import DEFAULT_SETS, PromptSetError, builtin_names, load_prompt_set
from knowledge_flow.prompts.environment import lower_first, one_line, strip_first_colon, strip_leading_colon
from knowledge_flow.state import KnowledgeItem
from knowledge_flow.strategies import STRATEGIES
from knowledge_flow.strategies.knowledge_flow import SPEC as KF
from knowledge_flow.strategies.knowledge_flow import numbered
from knowledge_flow.strategies.regeneration import SPEC as REGEN
from tests.support import legacy_prompts

PROBLEM = "What is 2 + 3?"


def test_filters_reproduce_the_original_text_treatment() -> None:
    assert strip_first_colon(": The answer is 5: not 6.") == "The answer is 5: not 6."
    assert strip_first_colon("ratio 3:  4") == "ratio 34"  # the first colon anywhere, as the scripts do
    assert strip_first_colon("no colon") == "no colon"
    assert strip_leading_colon("  :  text: more") == "text: more"
    assert strip_leading_colon("ratio 3:4") == "ratio 3:4"
    assert lower_first("The Answer") == "the Answer" and lower_first("") == ""
    assert one_line("a\n  b\tc ") == "a b c"


def test_builtin_sets_and_family_defaults() -> None:
    assert set(builtin_names()) >= {"kf-instruct", "kf-gpt-oss", "kf-qwen"}
    assert DEFAULT_SETS == {"gpt-oss": "kf-gpt-oss", "qwen3-thinking": "kf-qwen", "instruct": "kf-instruct"}
    for name in builtin_names():
        prompt_set = load_prompt_set(name)
        assert prompt_set.name == name and len(prompt_set.digest) == 64
        for strategy in STRATEGIES.values():  # every built-in set serves every strategy
            prompt_set.table(strategy.spec)


def kf_vars(reference: str | None, items: list[KnowledgeItem], iteration: int = 1) -> dict[str, object]:
    return {
        "problem": PROBLEM,
        "answer_slot": "<integer>",
        "iteration": iteration,
        "reference": reference,
        "knowledge": numbered(items),
    }


def test_kf_instruct_reproduces_the_previous_wording() -> None:
    table = load_prompt_set("kf-instruct").table(KF)
    items = [
        KnowledgeItem(wrong_answer="6", text=": The Answer cannot be 6, because 2+3 is not 6.", iteration=2),
        KnowledgeItem(wrong_answer="4", text=": The Answer cannot be 4,\nbecause  x.", iteration=1),
    ]
    legacy_items = [KnowledgeItem(wrong_answer=i["wrong_answer"], text=i["text"][2:], iteration=1) for i in items]
    assert table.render("first", **kf_vars(None, [], 0)) == legacy_prompts.first_rollout(PROBLEM, "integer")
    assert table.render("later", **kf_vars(": Add them: 5.", items)) == legacy_prompts.later_rollout(
        PROBLEM, "Add them: 5.", legacy_items, "integer"
    )
    assert table.render("later", **kf_vars(None, [])) == legacy_prompts.later_rollout(PROBLEM, None, [], "integer")
    regen = load_prompt_set("kf-instruct").table(REGEN)
    regen_vars = {**kf_vars(": S0", []), "avoid": ": 4 is wrong."}
    del regen_vars["knowledge"]
    assert regen.render("later", **regen_vars) == legacy_prompts.regeneration_rollout(
        PROBLEM, 1, "S0", "4 is wrong.", "integer"
    )


def test_kf_gpt_oss_and_qwen_list_forms() -> None:
    items = [
        KnowledgeItem(wrong_answer="7", text=": The reference says 7. Wrong.", iteration=3),
        KnowledgeItem(wrong_answer="5", text=": Five misses a case.", iteration=1),
    ]
    oss = load_prompt_set("kf-gpt-oss").table(KF)
    later = oss.render("later", **kf_vars(": Sum The parts.", items))
    assert (
        "## Empirical Mistakes List\n**Wrong Answer 1**: : The reference says 7. Wrong.\n**Wrong Answer 2**: " in later
    )
    assert "try to improve on it: sum The parts.\n\n### Output format" in later
    assert "[Why the reference solution is wrong?]:" in later
    empty = oss.render("later", **kf_vars(None, []))
    assert "## Empirical Mistakes List\nN/A\n\n### Reference Solution" in empty
    assert oss.rules.items_per_wrong_answer == 1 and oss.rules.item_text == "after_header"
    assert oss.rules.max_tokens_fraction == 0.9
    qwen = load_prompt_set("kf-qwen").table(KF)
    later = qwen.render("later", **kf_vars(": Sum The parts.", items))
    assert (
        "## Reference Solution\nReference Solution (check it only after solving on your own):\nsum The parts.\n\n"
        in later
    )
    assert "## Wrong Answer List\n**Wrong Answer 1**: the reference says 7. Wrong.\n**Wrong Answer 2**: five" in later
    assert "Note: No reference solution available." in qwen.render("later", **kf_vars(None, []))
    assert "## Wrong Answer List\nN/A\n\n###" in qwen.render("later", **kf_vars(None, []))
    assert qwen.render_optional("prefill_first", **kf_vars(None, [], 0)) is None
    assert qwen.render_optional("prefill_later", **kf_vars(None, [])).startswith("This is a hard problem")  # type: ignore[union-attr]
    assert qwen.rules.items_per_wrong_answer == 2 and qwen.rules.item_text == "report"


def write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_file_is_loaded_by_path_with_its_name_and_hash(tmp_path: Path) -> None:
    path = write(tmp_path, "first = '''{{ problem }}!'''\nlater = '''{{ problem }}?'''\n")
    loaded = load_prompt_set(str(path))
    assert loaded.name == "mine" and loaded.origin == str(path.resolve())
    table = loaded.table(KF)
    assert table.render("first", **kf_vars(None, [], 0)) == "What is 2 + 3?!"
    assert table.rules.items_per_wrong_answer == 2  # the rules' defaults
    named = load_prompt_set(str(write(tmp_path, "name = 'other'\nfirst = 'a'\nlater = 'b'\n", "x.toml")))
    assert named.name == "other" and named.digest != loaded.digest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("first = 'a'\n", "needs later"),
        ("first = 'a'\nlater = '{{ nope }}'\n", r"unknown variable\(s\) nope"),
        ("first = 'a'\nlater = 'b'\nextra = 'c'\n", r"unknown key\(s\) extra"),
        ("first = 'a'\nlater = '{% if %}'\n", "is not a valid template"),
        ("first = 'a'\nlater = 'b'\n[rules]\nitems_per_wrong_answer = 0\n", "items_per_wrong_answer"),
        ("first = 'a'\nlater = 'b'\n[rules]\nitem_text = 'all'\n", "item_text"),
        ("first = 'a'\nlater = 'b'\n[rules]\nmystery = 1\n", "mystery"),
        ("first = [1]\nlater = 'b'\n", "must be a string"),
        ("first = 'a\n", "not valid TOML"),
    ],
)
def test_bad_sets_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PromptSetError, match=message):
        load_prompt_set(str(write(tmp_path, text))).table(KF)


def test_missing_strategy_table_and_unknown_name(tmp_path: Path) -> None:
    loaded = load_prompt_set(str(write(tmp_path, "first = 'a'\nlater = 'b'\n")))
    with pytest.raises(PromptSetError, match=r"has no \[regeneration\] table"):
        loaded.table(REGEN)
    with pytest.raises(PromptSetError, match="unknown prompt set 'kf-nope'"):
        load_prompt_set("kf-nope")


def test_undefined_at_render_time_is_an_error(tmp_path: Path) -> None:
    table = load_prompt_set(str(write(tmp_path, "first = '{{ knowledge[3].text }}'\nlater = 'b'\n"))).table(KF)
    with pytest.raises(PromptSetError):
        table.render("first", **kf_vars(None, []))
