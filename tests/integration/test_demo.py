"""`kflow demo`: what it prints (the method made visible), what it sends, where its problems come from; and a
real run on the packaged 0.5B model (structure only: the model's answers are its own)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from knowledge_flow.cli.demo_watch import POLL_S
from knowledge_flow.demo_problems import CHECKOUT_DATASET, DEMO_PROBLEMS, load_demo_problems, packaged_rows
from knowledge_flow.options import SEED_STRIDE
from tests.conftest import free_port, run_kflow, shared_dataset
from tests.support.scripted_server import ScriptedServer, kf_output, script_responder


def report(wrong: int) -> str:
    return f"The Answer cannot be {wrong}, because the reference forgot a step. The correct approach is to recount."


def script(gold: int) -> list[str]:
    """Wrong, corrected (an item against the wrong answer), kept, then the wrong answer again (an item against
    the right one): the last answer is wrong, the majority over the four ties and goes to the latest."""
    wrong = gold + 1
    return [
        kf_output(str(wrong), f"S0: I got {wrong}.\nA second line."),
        kf_output(str(gold), f"S1: recounted, {gold}.", report(wrong)),
        kf_output(str(gold), f"S2: {gold} again.", "N/A"),
        kf_output(str(wrong), f"S3: back to {wrong}.", report(gold)),
    ]


def test_the_chosen_problems_are_the_packaged_copy() -> None:
    """The package's copy holds exactly the demo's problems, as gsm8k_dev.jsonl has them."""
    assert shared_dataset("gsm8k_dev.jsonl") == CHECKOUT_DATASET  # found where the tests find it
    from_checkout = load_demo_problems()
    assert [row["id"] for row in from_checkout.rows] == [problem.id for problem in DEMO_PROBLEMS]
    assert packaged_rows() == from_checkout.rows
    assert str(CHECKOUT_DATASET) in from_checkout.source
    assert all(problem.reason.strip() for problem in DEMO_PROBLEMS)


def test_without_a_checkout_the_packaged_copy_is_used_and_said(tmp_path: Path) -> None:
    loaded = load_demo_problems(tmp_path / "gsm8k_dev.jsonl")
    assert loaded.rows == packaged_rows()
    assert "shipped in the package" in loaded.source and "not a checkout" in loaded.source


def test_demo_shows_the_method(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    rows = load_demo_problems().rows
    scripts = {row["problem"]: script(int(row["answer"])) for row in rows}
    replies = script_responder(scripts)
    # each reply takes a moment, as a model's would, and the first one long enough that the watch (polling
    # every POLL_S) sees a rollout running however loaded the machine is: the progress line
    answered = itertools.count()
    server = scripted(
        lambda request: replace(replies(request), delay_s=6 * POLL_S if next(answered) == 0 else 0.6),
        keys=list(scripts),
    ).start()
    db, out = tmp_path / "demo.db", tmp_path / "demo-out"
    proc = run_kflow(["demo", "--base-url", server.base_url, "--db", str(db), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stderr.split())  # rich may wrap long lines
    assert f"Knowledge Flow demo: {len(rows)} GSM8K problems x 4 rollouts on scripted-model" in text
    assert f"problems: GSM8K test problems {', '.join(str(p.id) for p in DEMO_PROBLEMS)} from" in text
    assert "prompt set kf-instruct-paper (final answer last)" in text and "seed 1," in text
    for number, row in enumerate(rows, start=1):
        gold, wrong = int(row["answer"]), int(row["answer"]) + 1
        problem = text[text.index(f"problem {number} of {len(rows)} (GSM8K id {row['id']}, gold answer {gold})") :]
        expected = [
            f"rollout 0: answer {wrong} wrong",
            "reference: none (the first rollout sees only the problem)",
            "knowledge list: 0 items",
            f"rollout 1: answer {gold} right",
            f"reference (the summary it was shown): S0: I got {wrong}.",
            f"+ knowledge item: not {wrong}: The Answer cannot be {wrong}, because the reference forgot a step.",
            "knowledge list: 1 item",
            f"rollout 2: answer {gold} right",
            f"reference (the summary it was shown): S1: recounted, {gold}.",
            f"rollout 3: answer {wrong} wrong",
            f"+ knowledge item: not {gold}: The Answer cannot be {gold}, because",
            "knowledge list: 2 items",
            f"final answer (last): {wrong} vs gold {gold}: wrong; self-consistency (majority over the same "
            f"rollouts): {wrong}: wrong",
            "4 rollouts,",
        ]
        position = 0
        for line in expected:  # in this order
            found = problem.find(line, position)
            assert found >= 0, (line, problem[:3000])
            position = found + len(line)
        assert "A second line" not in problem  # the reference's first line only
        assert "The correct approach" not in problem  # the report's first sentence only
    assert re.search(r"rollout \d of 4: generating", text)  # a progress line while a rollout runs (plain here)
    assert f"{len(rows)} problems, {4 * len(rows)} rollouts," in text and "answered by scripted-model" in text
    assert f"knowledge-flow 0 of {len(rows)}, self-consistency over the same rollouts 0 of {len(rows)}" in text

    eval_id = re.search(r"evaluation run (demo-\d{8}-\d{6})", text)
    assert eval_id is not None
    shown = " ".join(proc.stdout.split())
    assert f"kflow show {eval_id.group(1)}:0 --db {db}" in shown
    page = out / "report" / "index.html"
    assert f"HTML report: {page.resolve()}" in shown and page.is_file()
    assert (out / "problems.jsonl").read_text().count("\n") == len(rows)

    # what the server received: the demo's settings, a seed per rollout
    bodies = [r.body for r in server.requests]
    assert len(bodies) == 4 * len(rows)
    assert all(b["model"] == "scripted-model" and b["max_tokens"] == 512 and b["temperature"] == 0.6 for b in bodies)
    assert sorted(b["seed"] for b in bodies) == sorted(1 + SEED_STRIDE * k for k in range(4) for _ in rows)
    later = [b["messages"][0]["content"] for b in bodies if "## Wrong Answer List" in b["messages"][0]["content"]]
    assert any(f"Wrong answer: {int(rows[0]['answer']) + 1}" in prompt for prompt in later)  # the list was sent

    # the same evaluation through `kflow show`: gold and right/wrong per rollout
    detail = json.loads(run_kflow(["show", f"{eval_id.group(1)}:0", "--db", str(db), "--json"]).stdout)
    assert [r["correct"] for r in detail["rollouts"]] == [False, True, True, False]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "FILE"], "is a file, not a folder"),
        (["--model", "qwen2.5-coder-70b"], "unknown packaged model 'qwen2.5-coder-70b'"),
        (["--base-url", "http://a:1/v1,http://b:1/v1"], "the demo takes one --base-url"),
        (["--iterations", "0"], "Invalid value for '--iterations'"),
    ],
)
def test_demo_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = [str(blocker) if arg == "FILE" else arg for arg in args]
    proc = run_kflow(["demo", *args, "--db", str(tmp_path / "d.db"), "--port", str(free_port())])
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]  # nothing written


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs the local extra")
def test_demo_on_the_packaged_model(tmp_path: Path) -> None:
    """The real thing, small: the 0.5B model started by the demo, one problem, two rollouts."""
    port = free_port()
    started = time.monotonic()
    proc = run_kflow(
        [
            *("demo", "--model", "qwen2.5-coder-0.5b", "--port", str(port), "--problems", "1", "--iterations", "2"),
            *("--db", str(tmp_path / "demo.db"), "--out", str(tmp_path / "out")),
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stderr.split())
    gold = load_demo_problems().rows[0]["answer"]
    assert "on qwen2.5-coder-0.5b-instruct" in text
    assert f"problem 1 of 1 (GSM8K id {DEMO_PROBLEMS[0].id}, gold answer {gold})" in text
    assert re.search(r"rollout 0: answer \S+ (right|wrong|no answer)", text)
    assert re.search(r"rollout 1: answer \S+ (right|wrong|no answer)", text)
    assert "reference: none (the first rollout sees only the problem)" in text
    assert re.search(rf"final answer \(last\): \S+ vs gold {gold}: (right|wrong|no answer); self-consistency", text)
    assert "answered by qwen2.5-coder-0.5b-instruct" in text
    assert (tmp_path / "out" / "report" / "index.html").is_file()
    print(f"demo, 1 problem x 2 rollouts on the 0.5B model: {time.monotonic() - started:.0f} s")
