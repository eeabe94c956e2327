from __future__ import annotations

from knowledge_flow.state import KnowledgeItem
from knowledge_flow.strategies.base import ITEM_OVERHEAD, item_tokens
from knowledge_flow.strategies.knowledge_flow import new_item, visible_items
from knowledge_flow.text.tokens import ESTIMATE, estimate_tokens


class Counter:
    """A tokenizer that counts characters, to tell served counts from the estimate."""

    exact = True

    def count(self, text: str) -> int:
        return len(text)


def item(wrong: str, text: str, iteration: int, tokens: int | None = None) -> KnowledgeItem:
    made = KnowledgeItem(wrong_answer=wrong, text=text, iteration=iteration)
    if tokens is not None:
        made["tokens"] = tokens
    return made


def test_item_added_only_on_changed_answer_with_report() -> None:
    made = new_item("5", "7", "The Answer cannot be 5, because x.", 3, "integer", ESTIMATE)
    assert made == item("5", "The Answer cannot be 5, because x.", 3, 9 + ITEM_OVERHEAD)
    assert new_item("5", "5", "The Answer cannot be 5", 3, "integer", ESTIMATE) is None  # same answer
    assert new_item("5", "05", "report", 3, "integer", ESTIMATE) is None  # same integer
    assert new_item("5", "−5", "report", 3, "integer", ESTIMATE) is not None  # a different sign
    assert new_item("-5", "−5", "report", 3, "integer", ESTIMATE) is None  # the Unicode minus is a minus
    assert new_item("5", "7", None, 3, "integer", ESTIMATE) is None  # no report
    assert new_item(None, "7", "report", 3, "integer", ESTIMATE) is None  # no previous answer
    assert new_item("5", None, "report", 3, "integer", ESTIMATE) is None  # no new answer


def test_item_cost_is_counted_once_with_the_served_tokenizer() -> None:
    made = new_item("5", "7", "  twelve chars ", 1, "integer", Counter())
    assert made is not None and made["text"] == "twelve chars" and made["tokens"] == 12 + ITEM_OVERHEAD
    assert item_tokens(made) == 12 + ITEM_OVERHEAD  # stored: no count needed to show it
    legacy = item("5", "four words of text", 1)  # written before counts were kept
    assert item_tokens(legacy) == estimate_tokens("four words of text") + ITEM_OVERHEAD


def test_latex_equivalent_answers_do_not_add_items() -> None:
    assert new_item("\\frac{1}{2}", "0.5", "report", 1, "latex", ESTIMATE) is None
    assert new_item("\\frac{1}{2}", "\\frac{1}{3}", "report", 1, "latex", ESTIMATE) is not None


def test_visible_newest_first() -> None:
    record = [item("1", "a", 1), item("2", "b", 2), item("3", "c", 3)]
    assert [i["wrong_answer"] for i in visible_items(record, 10_000)] == ["3", "2", "1"]


def test_per_answer_cap_and_hidden_not_deleted() -> None:
    record = [item("5", "oldest", 1), item("5", "older", 2), item("7", "x", 3), item("5", "newest", 4)]
    shown = visible_items(record, 10_000)
    assert [(i["wrong_answer"], i["text"]) for i in shown] == [("5", "newest"), ("7", "x"), ("5", "older")]
    one = visible_items(record, 10_000, per_answer=1)  # the gpt-oss script keeps one per wrong answer
    assert [(i["wrong_answer"], i["text"]) for i in one] == [("5", "newest"), ("7", "x")]
    assert len(record) == 4


def test_per_answer_uses_normalised_answers() -> None:
    record = [item("5", "a", 1), item("5.0", "b", 2), item("05", "c", 3)]
    assert [i["text"] for i in visible_items(record, 10_000)] == ["c", "b"]


def test_token_budget_bounds_the_list_with_stored_costs() -> None:
    record = [item(str(i), "word " * 100, i, tokens=110) for i in range(20)]
    shown = visible_items(record, 350)
    assert [i["wrong_answer"] for i in shown] == ["19", "18", "17"]
    assert visible_items(record, 0) == []


def test_item_too_large_is_skipped_but_smaller_older_fit() -> None:
    record = [item("1", "short", 1, tokens=15), item("2", "long", 2, tokens=500)]
    assert [i["wrong_answer"] for i in visible_items(record, 50)] == ["1"]


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("The Answer cannot be 5, because x.") == 9


def test_knowledge_writes_are_deltas_unless_items_go() -> None:
    from langgraph.types import Overwrite

    from knowledge_flow.nodes.distill import knowledge_update

    a = KnowledgeItem(wrong_answer="5", text="A", iteration=1)
    b = KnowledgeItem(wrong_answer="7", text="B", iteration=2)
    c = KnowledgeItem(wrong_answer=None, text="C", iteration=3)
    assert knowledge_update([a], [a, b]) == [b]  # grown: only the new item is written
    assert knowledge_update([a, b], [a, b]) == []  # unchanged: nothing
    assert knowledge_update([], [a]) == [a]
    replaced = knowledge_update([a], [c])  # regeneration replaces the list
    assert isinstance(replaced, Overwrite) and replaced.value == [c]
    dropped = knowledge_update([a, b], [b, c])  # positive knowledge drops an item
    assert isinstance(dropped, Overwrite) and dropped.value == [b, c]
