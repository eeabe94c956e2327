"""The original scripts' prompts, byte for byte, from prompt sets shaped like them.

Each prompt set below has the exact structure of one original script (EvanZhuang/test_time_recursive_thinking,
``AIME/scripts/vllm_kflow_oss.py`` and ``vllm_kflow_qwen.py``) with placeholders (``<G>``, ``<INSTR>``, ...) in
place of the authors' sentences. An oracle re-implements each script's loop for one problem (list building,
deduplication, reference intro, text treatment, prefill) with the same placeholders; a 9-rollout scripted run
through the graph must send exactly the prompts the oracle builds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.strategy_support import PROBLEM, run_recorded
from tests.support.scripted_server import ScriptedServer, script_responder

SP = "⟨SP⟩"  # a trailing space in the original texts (kept out of this file's lines)

ANSWER_LINE = "[Answer]: Therefore, final answer is \\boxed{<integer>}."
OSS_INIT = f"\n\nGuideline: <G>{SP}\n\n## Output format (<H>):\n[Summary]: <S>\n{ANSWER_LINE}\n\n<CLOSE>\n"
OSS_CMD = (
    "\n\n<INSTR>\n\n{knowledge_text}\n\n### Reference Solution" + SP + "\n<CAUTION>\n{reference_solution}\n\n"
    "### Output format (<H>):\n[Why the reference solution is wrong?]: <W>\n[Summary]: <S>\n"
    "[Answer]: Therefore, final answer is \\boxed{<integer>}.\n\n<CLOSE>"
)
QWEN_INIT = "\n\nGuideline: <G>" + SP + f"\n\n## Output format (<H>):\n[Summary]: <S>\n{ANSWER_LINE}\n\n<CLOSE>\n"
QWEN_CMD = (
    "\n\n<INSTR>\n\n## Reference Solution\n{reference_solution}\n\n{knowledge_text}\n\n"
    "### Output format (<H>):\n[Error Report]: <E>\n[Summary]: <S>\n" + ANSWER_LINE
)
EPS = "<EPS>"

OSS_SET = (
    """name = "oss-shaped"
first = '''
{{ problem }}

Guideline: <G>⟨SP⟩

## Output format (<H>):
[Summary]: <S>
[Answer]: Therefore, final answer is \\boxed{ {{- answer_slot }}}.

<CLOSE>
'''
later = '''
{{ problem }}

<INSTR>

{% if knowledge %}## Empirical Mistakes List
{% for item in knowledge %}**Wrong Answer {{ item.number }}**: {{ item.text }}{% if not loop.last %}
{% endif %}{% endfor %}{% else %}

## Empirical Mistakes List
N/A{% endif %}

### Reference Solution⟨SP⟩
<CAUTION>
{% if reference %}<INTRO>:{{ reference | strip_first_colon | lower_first }}{% endif %}

### Output format (<H>):
[Why the reference solution is wrong?]: <W>
[Summary]: <S>
[Answer]: Therefore, final answer is \\boxed{ {{- answer_slot }}}.

<CLOSE>'''

[rules]
items_per_wrong_answer = 1
report_section = "Why the reference solution is wrong?"
item_text = "after_header"
skip_na_report = false
max_tokens_fraction = 0.9
"""
).replace(SP, " ")

QWEN_SET = (
    """name = "qwen-shaped"
first = '''
{{ problem }}

Guideline: <G>⟨SP⟩

## Output format (<H>):
[Summary]: <S>
[Answer]: Therefore, final answer is \\boxed{ {{- answer_slot }}}.

<CLOSE>
'''
later = '''
{{ problem }}

<INSTR>

## Reference Solution
{% if reference %}<RINTRO>:
{{ reference | strip_first_colon | lower_first }}{% else %}Note: <NONE>{% endif %}

## Wrong Answer List
{% for item in knowledge -%}
**Wrong Answer {{ item.number }}**: {{ item.text | strip_first_colon | lower_first }}{% if not loop.last %}
{% endif %}
{%- else -%}
N/A
{%- endfor %}

### Output format (<H>):
[Error Report]: <E>
[Summary]: <S>
[Answer]: Therefore, final answer is \\boxed{ {{- answer_slot }}}.'''
prefill_later = '<EPS>'

[rules]
items_per_wrong_answer = 2
report_section = "Error Report"
item_text = "report"
skip_na_report = false
max_tokens_fraction = 0.9
"""
).replace(SP, " ")


def remove_first_colon(text: str) -> str:
    index = text.find(":")
    return text[:index] + text[index + 1 :].lstrip() if index != -1 else text


def lower(text: str) -> str:
    return text[0].lower() + text[1:] if len(text) > 1 else text.lower()


def first_boxed_int(text: str) -> int | None:
    match = re.search(r"\\boxed{(-?\d+)}", text)
    return int(match.group(1)) if match else None


def last_boxed_int(text: str) -> int | None:
    matches = re.findall(r"\\boxed{(-?\d+)}", text)
    return int(matches[-1]) if matches else None


def oracle(outputs: list[str], *, qwen: bool) -> list[tuple[str, str | None]]:
    """(user message, prefill) of every rollout, as the original script builds them for one problem."""
    header = "[Error Report]" if qwen else "[Why the reference solution is wrong?]"
    extract: Callable[[str], int | None] = last_boxed_int if qwen else first_boxed_int
    summaries: list[str] = []
    knowledges: list[str] = []
    drops: list[int] = []
    tracker: list[int] = []
    prompts: list[tuple[str, str | None]] = []
    for k, output in enumerate(outputs):
        if k == 0:
            prompts.append((PROBLEM + (QWEN_INIT if qwen else OSS_INIT).replace(SP, " "), None))
        else:
            x = outputs[k - 1]
            summaries.append(lower(remove_first_colon(x.split("[Summary]")[-1].strip().split("[Answer]")[0].strip())))
            this = extract(x.split("[Answer]")[-1].strip())
            if len(tracker) > 1 and this is not None and this != tracker[-2] and header in x:
                drops.append(tracker[-2])
                if qwen:
                    knowledges.append(lower(remove_first_colon(x.split(header)[-1].split("[Summary]")[0].strip())))
                else:
                    knowledges.append(x.split(header)[-1].strip())
            cap = 2 if qwen else 1
            seen: dict[int, int] = {}
            unique = []
            for index in range(len(knowledges) - 1, -1, -1):
                if seen.get(drops[index], 0) >= cap:
                    continue
                seen[drops[index]] = seen.get(drops[index], 0) + 1
                unique.append(knowledges[index])
            items = "\n".join(f"**Wrong Answer {i + 1}**: {text}" for i, text in enumerate(unique))
            if qwen:
                knowledge_text = "## Wrong Answer List\n" + (items or "N/A")
                reference = f"<RINTRO>:\n{summaries[-1]}" if summaries else "Note: <NONE>"
            else:
                knowledge_text = (
                    "## Empirical Mistakes List\n" + items if items else "\n\n## Empirical Mistakes List\nN/A"
                )
                reference = f"<INTRO>:{summaries[-1]}" if summaries else ""
            command = (QWEN_CMD if qwen else OSS_CMD).replace(SP, " ")
            text = command.replace("{knowledge_text}", knowledge_text).replace("{reference_solution}", reference)
            prompts.append((PROBLEM + text, EPS if qwen else None))
        answer = extract(output)
        if answer is not None:
            tracker.append(answer)
    return prompts


def outputs_for(report_header: str) -> list[str]:
    """9 rollouts: answers 5 7 5 7 5 9 5 7 7, reports on every change (one of them N/A), a report without a
    change, summaries starting with a capital and holding colons."""

    def out(answer: int, summary: str, report: str | None) -> str:
        head = f"[{report_header}]: {report}\n" if report is not None else ""
        return f"{head}[Summary]: {summary}\n[Answer]: Therefore, final answer is \\boxed{{{answer}}}."

    def why(wrong: int, n: int) -> str:
        return f"The Answer cannot be {wrong}, because of case {n}: it is counted twice. The correct approach: recount."

    return [
        out(5, "First try: five divisors.", None),
        out(7, "Counted: seven.", why(5, 1)),
        out(5, "Back to five: ratio 1:5.", why(7, 2)),
        out(7, "Seven again.", why(5, 3)),
        out(5, "Five, once more.", why(7, 4)),
        out(9, "Nine: 36 = 2^2 3^2.", "N/A"),  # a change whose report says N/A
        out(5, "Five.", why(9, 6)),
        out(7, "Seven.", why(5, 7)),
        out(7, "Seven, confirmed.", why(5, 8)),  # a report without a change adds nothing
    ]


@pytest.mark.parametrize(
    ("shape", "model", "header", "qwen"),
    [
        (OSS_SET, "openai/gpt-oss-120b", "Why the reference solution is wrong?", False),
        (QWEN_SET, "Qwen/Qwen3-235B-A22B-Thinking-2507", "Error Report", True),
    ],
    ids=["gpt-oss", "qwen"],
)
def test_prompt_set_with_the_scripts_shape_sends_their_exact_prompts(
    scripted: type[ScriptedServer], tmp_path: Path, shape: str, model: str, header: str, qwen: bool
) -> None:
    prompt_file = tmp_path / "shape.toml"
    prompt_file.write_text(shape)
    outputs = outputs_for(header)
    server = scripted(script_responder({"default": outputs})).start()
    final, _ = run_recorded(
        server, tmp_path / "f.db", iterations=9, model=model, prompts=str(prompt_file), max_new_tokens=1000
    )
    expected = oracle(outputs, qwen=qwen)
    assert len(server.requests) == 9
    for k, (request, (user, prefill)) in enumerate(zip(server.requests, expected, strict=True)):
        messages = request.body["messages"]
        assert messages[0] == {"role": "user", "content": user}, f"rollout {k}"
        if prefill is None:  # the prefill only from rollout 1 on (Qwen), never for gpt-oss
            assert len(messages) == 1, f"rollout {k}"
        else:
            assert messages[1] == {"role": "assistant", "content": prefill}, f"rollout {k}"
            assert request.body["continue_final_message"] is True
        assert request.body["max_tokens"] == 900  # 0.9 x max_new_tokens, as the scripts request
        assert request.body["top_k"] == -1 and request.body["temperature"] == 0.6
    assert final["params"]["prompt_set"] == ("qwen-shaped" if qwen else "oss-shaped")
    # the exercised rules, read off the expected prompts themselves: the list caps and the N/A item
    last = expected[-1][0]
    if qwen:  # two per wrong answer, newest first; the N/A report of the change to 9 is an item too
        assert last.count("**Wrong Answer") == 5 and "**Wrong Answer 3**: n/A" in last
    else:  # one per wrong answer; the N/A item is shown until a newer item for 5 replaces it
        assert last.count("**Wrong Answer") == 3
        assert "**Wrong Answer 1**: : N/A\n[Summary]: Nine" in expected[6][0]
