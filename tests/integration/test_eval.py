"""`kflow eval` / `kflow report` against the scripted server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from knowledge_flow.prompts import load_prompt_set
from tests.conftest import run_kflow, shared_dataset, start_kflow
from tests.integration.scripts import PAPER_SET
from tests.support.databases import Database
from tests.support.eval_script import eval_responder, iteration_of
from tests.support.scripted_server import Reply, Request, ScriptedServer, word_count

AIME25 = "aime_2025.jsonl"


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def aime_answer(golds: dict[str, int], order: list[str]) -> Any:
    def answer(key: str, k: int) -> str:
        position = order.index(key)
        gold = golds[key]
        return str(gold) if (position + k) % 3 == 0 else str((gold + 1) % 1000)

    return answer


def eval_args(
    server: ScriptedServer, tmp: Path, dataset: Path, iterations: int, run_id: str, *extra: str, db: str | None = None
) -> list[str]:
    return [
        "eval",
        "--dataset",
        str(dataset),
        "--iterations",
        str(iterations),
        "--model",
        "org/Scripted-Model-7B",
        "--base-url",
        server.base_url,
        "--max-new-tokens",
        "4096",
        "--prompts",
        PAPER_SET,
        "--temperature",
        "0.6",
        "--output-postfix",
        "kftest",
        "--db",
        db or str(tmp / "eval.db"),
        "--output-dir",
        str(tmp / "results"),
        "--eval-id",
        run_id,
        "--json",
        *extra,
    ]


def test_aime25_run_matches_the_script(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    dataset = shared_dataset(AIME25)
    data = rows(dataset)
    order = [row["problem"] for row in data]
    golds = {row["problem"]: int(row["answer"]) for row in data}
    delays = {row["problem"]: 0.002 * (i % 7) for i, row in enumerate(data)}
    server = scripted(eval_responder(aime_answer(golds, order), delays), keys=order).start()
    iterations = 4
    proc = run_kflow(eval_args(server, tmp_path, dataset, iterations, "aime-run", "--concurrency", "30"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)

    answer = aime_answer(golds, order)
    for k in range(iterations):
        expected_correct = sum(answer(p, k) == str(golds[p]) for p in order)
        figures = result["per_iteration"][k]
        assert figures["accuracy"] == pytest.approx(expected_correct / 30)
        solved = sum(any(answer(p, j) == str(golds[p]) for j in range(k + 1)) for p in order)
        assert figures["cumulative_solved"] == pytest.approx(solved / 30)
    assert result["final_accuracy"] == pytest.approx(
        sum(answer(p, iterations - 1) == str(golds[p]) for p in order) / 30
    )
    assert result["problems"] == 30 and result["finished"] == 30 and result["failed"] == 0
    assert len(server.requests) == 30 * iterations

    folder = tmp_path / "results" / "vllm_4096_kftest" / "Scripted-Model-7B"
    assert sorted(p.name for p in folder.iterdir()) == [f"predictions_{k}.json" for k in range(iterations)]
    for k in range(iterations):
        content = json.loads((folder / f"predictions_{k}.json").read_text())
        head, entries = content[0], content[1:]
        prompts_k = [r for r in server.requests if iteration_of(r.prompt) == k]
        expected_prompt_length = sum(word_count(r.prompt) for r in prompts_k) / 30
        correct = sum(answer(p, k) == str(golds[p]) for p in order)
        assert head == {
            "accuracy": pytest.approx(correct / 30),
            "total": 30,
            "correct": correct,
            "average_prompt_length": pytest.approx(expected_prompt_length),
        }
        sent = {r.key: r.prompt for r in prompts_k}  # the prompt as the server received it
        assert [e["question"] for e in entries] == [sent[p] for p in order]
        assert all(e["question"].startswith(p) or p in e["question"] for p, e in zip(order, entries, strict=True))
        assert [e["gold"] for e in entries] == [str(golds[p]) for p in order]
        assert [e["predicted"] for e in entries] == [int(answer(p, k)) for p in order]  # integers, as the scripts
        assert all(
            f"ITER-{k}: the answer is {answer(p, k)}." in e["pred_solution"]
            for p, e in zip(order, entries, strict=True)
        )

    manifest = json.loads(
        sqlite3.connect(tmp_path / "eval.db").execute("SELECT manifest_json FROM kf_evals").fetchone()[0]
    )
    assert manifest["model"] == "org/Scripted-Model-7B"
    assert manifest["endpoint"] == server.base_url
    assert manifest["params"]["temperature"] == 0.6 and manifest["params"]["iterations"] == iterations
    assert manifest["strategy"] == "knowledge-flow" and manifest["prompt_set"] == PAPER_SET
    assert manifest["prompt_hash"] == load_prompt_set(PAPER_SET).digest
    assert len(manifest["dataset_hash"]) == 64 and manifest["problems"] == 30
    assert manifest["started_at"] and manifest["finished_at"] and manifest["package_version"]

    report = run_kflow(
        ["report", "aime-run", "--db", str(tmp_path / "eval.db"), "--out", str(tmp_path / "rep"), "--json"]
    )
    assert report.returncode == 0, report.stderr
    payload = json.loads(report.stdout)
    assert payload["per_iteration"] == result["per_iteration"]
    assert Path(payload["plot"]).is_file() and Path(payload["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigkill_eval_then_resume(scripted: type[ScriptedServer], tmp_path: Path, database: Database) -> None:
    data = rows(shared_dataset(AIME25))[:6]
    dataset = tmp_path / "six.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in data))
    order = [row["problem"] for row in data]
    golds = {row["problem"]: int(row["answer"]) for row in data}
    iterations = 4

    reference_server = scripted(eval_responder(aime_answer(golds, order)), keys=order).start()
    (tmp_path / "ref").mkdir()
    reference = run_kflow(eval_args(reference_server, tmp_path / "ref", dataset, iterations, "six"))
    assert reference.returncode == 0, reference.stderr

    server = scripted(eval_responder(aime_answer(golds, order), {p: 0.15 for p in order}), keys=order).start()
    args = eval_args(server, tmp_path, dataset, iterations, "six", "--concurrency", "3", db=database.target)
    proc = start_kflow(args, new_session=True)
    deadline = time.monotonic() + 120
    while len(server.delivered()) < 9:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.5)  # in-flight replies find the client gone

    stored = set(database.rows("SELECT thread_id, iteration FROM kf_rollouts"))
    assert 0 < len(stored) < len(order) * iterations
    resume_started = time.monotonic()
    resumed = run_kflow(["eval", "--resume", "six", "--db", database.target, "--json"])
    assert resumed.returncode == 0, resumed.stderr
    after, before = json.loads(resumed.stdout), json.loads(reference.stdout)
    for key in ("per_iteration", "final_accuracy", "problems", "finished", "total_tokens"):
        assert after[key] == before[key], key
    a = json.loads((tmp_path / "results/vllm_4096_kftest/Scripted-Model-7B/predictions_3.json").read_text())
    b = json.loads((tmp_path / "ref/results/vllm_4096_kftest/Scripted-Model-7B/predictions_3.json").read_text())
    assert a == b

    # nothing stored before the resume was requested again
    again = {
        (f"six:{order.index(r.key)}", iteration_of(r.prompt)) for r in server.requests if r.started >= resume_started
    }
    assert not (again & stored)
    assert len(server.delivered()) <= len(order) * iterations + 3


def test_no_barrier_slow_problem_does_not_hold_back_others(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    data = rows(shared_dataset(AIME25))[:5]
    dataset = tmp_path / "five.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in data))
    order = [row["problem"] for row in data]
    golds = {row["problem"]: int(row["answer"]) for row in data}
    slow = order[0]
    server = scripted(
        eval_responder(aime_answer(golds, order), {slow: 1.0, **{p: 0.01 for p in order[1:]}}), keys=order
    ).start()
    proc = run_kflow(eval_args(server, tmp_path, dataset, 4, "nb", "--concurrency", "5"))
    assert proc.returncode == 0, proc.stderr
    slow_ends = sorted(r.ended for r in server.requests if r.key == slow and r.ended)
    assert len(slow_ends) == 4
    for fast in order[1:]:
        fast_requests = [r for r in server.requests if r.key == fast]
        assert len(fast_requests) == 4
        # every other problem finished all its rollouts before the slow one finished its second
        assert max(r.ended for r in fast_requests if r.ended) < slow_ends[1]


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ('{"question": "q", "answer": 1}\n', [], "has no column 'problem'"),
        ('{"problem": "q", "solution": 1}\n', [], "has no column 'answer'"),
        ("", [], "is empty"),
        ('{"problem": "q", "answer": "\\\\frac{1}{2}"}\n', ["--answer-type", "integer"], "is not an integer"),
        (b"\xff\xfe\x00garbage", [], "is not UTF-8"),
        ('{"problem": "q", "answer": 1}\n{not json\n', [], "line 2 is not valid JSON"),
        ('{"problem": "", "answer": 1}\n', [], "the problem is empty"),
        ('{"problem": "q", "answer": 1}\n', ["--problem-field", "text"], "has no column 'text'"),
    ],
)
def test_bad_dataset_exit_2_nothing_sent_or_written(
    scripted: type[ScriptedServer], tmp_path: Path, content: str | bytes, extra: list[str], message: str
) -> None:
    server = scripted(eval_responder(lambda _k, _i: "1")).start()
    dataset = tmp_path / "data" / "bad.jsonl"
    dataset.parent.mkdir()
    if isinstance(content, bytes):
        dataset.write_bytes(content)
    else:
        dataset.write_text(content)
    work = tmp_path / "work"
    work.mkdir()
    proc = run_kflow(eval_args(server, work, dataset, 2, "bad", *extra))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert server.requests == []
    assert list(work.iterdir()) == []


def test_unknown_dataset_name_and_directory(tmp_path: Path) -> None:
    proc = run_kflow(["eval", "--dataset", "not-a-set", "--db", str(tmp_path / "x.db")])
    assert proc.returncode == 2 and "unknown dataset" in proc.stderr
    proc = run_kflow(["eval", "--dataset", str(tmp_path), "--db", str(tmp_path / "x.db")])
    assert proc.returncode == 2 and "is not a file" in " ".join(proc.stderr.split())
    assert not (tmp_path / "x.db").exists()


def test_latex_answers_judged_by_math_verify(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    problems = [
        {"id": "a", "problem": "Half of one?", "answer": "\\frac{1}{2}"},
        {"id": "b", "problem": "sin 45 degrees?", "answer": "\\frac{\\sqrt2}{2}"},
        {"id": "c", "problem": "A third?", "answer": "\\frac{1}{3}"},
    ]
    dataset = tmp_path / "latex.jsonl"
    dataset.write_text("\n".join(json.dumps(p) for p in problems))
    replies = {"Half of one?": "0.5", "sin 45 degrees?": "\\sqrt{2}/2", "A third?": "0.25"}
    server = scripted(eval_responder(lambda key, _k: replies[key]), keys=list(replies)).start()
    proc = run_kflow(eval_args(server, tmp_path, dataset, 1, "latex"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["per_iteration"][0]["accuracy"] == pytest.approx(2 / 3)
    conn = sqlite3.connect(tmp_path / "eval.db")
    grades = [json.loads(r[0]) for r in conn.execute("SELECT correct_json FROM kf_eval_items ORDER BY position")]
    assert grades == [[True], [True], [False]]


def test_early_stopping_saves_rollouts_and_carries_answers(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    data = rows(shared_dataset(AIME25))[:3]
    dataset = tmp_path / "three.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in data))
    order = [row["problem"] for row in data]
    golds = {row["problem"]: int(row["answer"]) for row in data}

    def answer(key: str, k: int) -> str:  # problem 0 settles at once; the others keep changing
        return str(golds[key]) if order.index(key) == 0 else str((golds[key] + k) % 1000)

    server = scripted(eval_responder(answer), keys=order).start()
    proc = run_kflow(eval_args(server, tmp_path, dataset, 6, "early", "--stop-policy", "stable:2"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rollouts_done"] == 2 + 6 + 6
    assert result["rollouts_budget"] == 18
    assert result["rollouts_saved"] == 4
    assert result["tokens_saved_estimate"] > 0
    assert [f["accuracy"] for f in result["per_iteration"]] == pytest.approx([1.0, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    last = json.loads((tmp_path / "results/vllm_4096_kftest/Scripted-Model-7B/predictions_5.json").read_text())
    assert last[1]["predicted"] == golds[order[0]] and last[1]["pred_solution"] == ""


def test_report_regrades_stored_outputs_by_answer_rule(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """`kflow report --answer-rule` reads answers again from the stored outputs; no request is sent."""
    data = tmp_path / "two.jsonl"
    data.write_text('{"problem": "P-one", "answer": "12"}\n{"problem": "P-two", "answer": "−4"}\n')

    def respond(request: Request) -> Reply:
        if "P-one" in request.prompt:  # the reasoning boxes a wrong value first; the final text is right
            return Reply(
                content="[Summary]: s\n[Answer]: \\boxed{12}", reasoning="try \\boxed{3}", reasoning_key="reasoning"
            )
        return Reply(content="[Summary]: the value is 7 then\n[Answer]: \\boxed{−4} (checked 9 times)")

    server = scripted(respond, keys=["P-one", "P-two"]).start()
    db = tmp_path / "r.db"
    args = ["eval", "--dataset", str(data), "--iterations", "2", "--base-url", server.base_url, "--db", str(db)]
    proc = run_kflow([*args, "--model", "openai/gpt-oss-120b", "--run-id", "rg", "--output-dir", str(tmp_path / "res")])
    assert proc.returncode == 0, proc.stderr
    sent = len(server.requests)

    def accuracy(rule: str) -> tuple[list[float], float]:
        report = run_kflow(
            ["report", "rg", "--db", str(db), "--out", str(tmp_path / "rep"), "--answer-rule", rule, "--json"]
        )
        assert report.returncode == 0, report.stderr
        payload = json.loads(report.stdout)
        assert payload["answer_rule"] == rule
        return [f["accuracy"] for f in payload["per_iteration"]], payload["final_accuracy"]

    assert accuracy("default") == ([1.0, 1.0], 1.0)  # −4 is -4
    assert accuracy("paper") == ([0.5, 0.5], 0.5)  # gpt-oss: the first boxed integer, reasoning included
    assert accuracy("first-boxed") == ([0.5, 0.5], 0.5)
    assert accuracy("last-integer") == ([0.5, 0.5], 0.5)  # P-two's last integer is 9
    assert accuracy("last-boxed") == ([1.0, 1.0], 1.0)
    assert len(server.requests) == sent  # re-grading sent nothing
    bad = run_kflow(["report", "rg", "--db", str(db), "--answer-rule", "best"])
    assert bad.returncode == 2 and "unknown answer rule 'best'" in bad.stderr
    predictions = json.loads(
        (tmp_path / "res" / "vllm_512_knowledge-flow" / "gpt-oss-120b" / "predictions_0.json").read_text()
    )
    assert [entry["predicted"] for entry in predictions[1:]] == [12, -4]  # integers, as the original scripts write


def test_report_compare_pairs_runs_on_the_same_problems(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    """`kflow report A --compare B`: accuracy with its Wilson interval, wins/losses of B against A on the same
    problems with the exact McNemar p, per-iteration pass@1 and flips."""
    data = rows(shared_dataset(AIME25))[:12]
    dataset = tmp_path / "twelve.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in data))
    order = [row["problem"] for row in data]
    golds = {row["problem"]: int(row["answer"]) for row in data}

    def every_other(key: str, k: int) -> str:  # right when position + k is even
        gold = golds[key]
        return str(gold) if (order.index(key) + k) % 2 == 0 else str((gold + 1) % 1000)

    runs = {"base": aime_answer(golds, order), "other": every_other}
    for name, answer in runs.items():
        server = scripted(eval_responder(answer), keys=order).start()
        proc = run_kflow(eval_args(server, tmp_path, dataset, 4, name))
        assert proc.returncode == 0, proc.stderr
    args = ["report", "base", "--compare", "other", "--db", str(tmp_path / "eval.db"), "--out", str(tmp_path / "r")]
    report = run_kflow([*args, "--json"])
    assert report.returncode == 0, report.stderr
    base, other = json.loads(report.stdout)["comparison"]
    # last answers (iteration 3): base right at positions 0, 3, 6, 9; other at the odd positions
    assert (base["correct"], other["correct"], other["problems"]) == (4, 6, 12)
    assert base["paired"] is None
    assert (other["paired"]["wins"], other["paired"]["losses"]) == (4, 2)  # 1, 5, 7, 11 against 0, 6
    assert other["paired"]["p_value"] == pytest.approx(44 / 64)
    low, high = other["interval"]
    assert low == pytest.approx(0.2538, abs=1e-4) and high == pytest.approx(0.7462, abs=1e-4)
    assert other["pass_at_1"] == [0.5, 0.5, 0.5, 0.5]
    assert (other["right_to_wrong"], other["wrong_to_right"]) == (18, 18)  # every step flips every problem
    text = run_kflow(args)
    assert "4/2" in text.stdout and "0.688" in text.stdout and "50.0% (6/12)" in text.stdout
