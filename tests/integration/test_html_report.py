"""`kflow report ... --html DIR`: the page opened in a real headless Chromium (plots, tables, trajectories, no
console errors, nothing loaded from elsewhere, every outside text escaped); `knowledge_flow.figures`' frames."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

import pytest

from knowledge_flow.figures import iterations_frame, problems_frame, rollouts_frame
from knowledge_flow.persistence import get_store
from tests.conftest import run_kflow, scripted_server
from tests.integration.scripts import PAPER_SET, PROBLEM, SCRIPT
from tests.support.browser import Elements, render, screenshot_is_not_blank
from tests.support.scripted_server import ScriptedServer, kf_output

HOSTILE = "What is 2 + 2? <script>alert('problem')</script> & <b>bold</b>"
HOSTILE_SCRIPT = [
    kf_output("3", "S0: <img src=x onerror=alert(1)> three."),
    kf_output("4", "S1: four.", "The Answer cannot be 3, because <script>alert('report')</script>. Recount."),
    kf_output("4", "S2: four again.", "N/A"),
]
GOLD = {PROBLEM: "9", HOSTILE: "4"}


def dataset(folder: Path) -> Path:
    path = folder / "two.jsonl"
    rows = [{"id": f"p{i}", "problem": problem, "answer": gold} for i, (problem, gold) in enumerate(GOLD.items())]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def evaluate(server: ScriptedServer, folder: Path, eval_id: str, *extra: str) -> None:
    proc = run_kflow(
        [
            "eval",
            "--dataset",
            str(dataset(folder)),
            "--iterations",
            "3",
            "--model",
            "scripted-model",
            "--base-url",
            server.base_url,
            "--prompts",
            PAPER_SET,
            "--db",
            str(folder / "eval.db"),
            "--output-dir",
            str(folder / "results"),
            "--eval-id",
            eval_id,
            "--json",
            *extra,
        ]
    )
    assert proc.returncode == 0, proc.stderr


def check_links(folder: Path, page: Path, elements: Elements) -> None:
    """Nothing is loaded from elsewhere: images are data URIs; links point into the page or to pages next to
    it, at anchors that exist."""
    for attrs in elements.find("img"):
        assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:80]
    for tag, attrs in elements.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), (tag, attrs)
        for name in ("src", "href"):
            target = attrs.get(name, "")
            if not target or target.startswith("data:"):
                continue
            parsed = urlparse(target)
            assert not parsed.scheme and not parsed.netloc, target
            file = (page.parent / parsed.path) if parsed.path else page
            assert file.resolve().is_relative_to(folder.resolve()) and file.is_file(), target
            if parsed.fragment:
                assert parsed.fragment in Elements(file.read_text()).ids, target


def test_evaluation_report_renders_in_chromium(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted_server(scripted, {PROBLEM: SCRIPT, HOSTILE: HOSTILE_SCRIPT, "default": SCRIPT})
    evaluate(server, tmp_path, "kf")
    evaluate(server, tmp_path, "sc", "--strategy", "self-consistency")
    folder = tmp_path / "html"
    proc = run_kflow(
        [
            "report",
            "kf",
            "--compare",
            "sc",
            "--db",
            str(tmp_path / "eval.db"),
            "--out",
            str(tmp_path / "png"),
            "--html",
            str(folder),
            "--json",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    page = Path(json.loads(proc.stdout)["html"])
    assert page == folder / "index.html"

    # every text from outside is escaped: no element came from the problem, the outputs or the reports
    source = page.read_text()
    assert "&lt;script&gt;alert(&#39;problem&#39;)&lt;/script&gt;" in source
    assert "<script" not in source and "<img src=x" not in source
    texts = sorted((folder / "rollouts").glob("*.html"))
    assert len(texts) == 4  # two runs x two problems
    assert all("<script" not in text.read_text() for text in texts)

    rendered = render(page, tmp_path / "shot.png")
    assert rendered.console == []
    dom = Elements(rendered.dom)
    assert len(dom.find("img", id="plot")) == 1
    iterations = [a for t, a in dom.tags if t == "table" and a.get("class") == "iterations"]
    assert len(iterations) == 2  # one per run
    assert len(dom.find("table", **{"class": "comparison"})) == 1
    assert len(dom.find("details", **{"class": "trajectory"})) == 4
    assert "95% CI" in rendered.dom and "McNemar p" in rendered.dom
    # the trajectory of PROBLEM under knowledge-flow: one chip per rollout, right only where the answer is 9
    chips = [a for a in dom.find("a") if a.get("class", "").startswith("chip") and "run0-problem0" in a["href"]]
    assert [a["class"] for a in chips] == ["chip wrong", "chip wrong", "chip wrong"]  # answers 5, 7, 7
    assert "not 5: The Answer cannot be 5, because R1" in rendered.dom  # the item rollout 1 added
    check_links(folder, page, dom)
    figures = screenshot_is_not_blank(rendered.screenshot)
    assert figures["width"] == 1400 and figures["ink"] > 0.05 and figures["colour"] > 0.002, figures

    # the rollouts' texts, escaped, at the anchors the trajectory links to
    hostile = folder / "rollouts" / "run0-problem1.html"
    shown = render(hostile, tmp_path / "texts.png")
    assert shown.console == []
    assert {"rollout-0-0", "rollout-1-0", "rollout-2-0"} <= Elements(shown.dom).ids
    assert "&lt;img src=x onerror=alert(1)&gt;" in shown.dom


def test_the_console_check_sees_errors(tmp_path: Path) -> None:
    """The check above can fail: a page that logs an error and throws is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><title>x</title><script>console.error('bad'); missing();</script>")
    rendered = render(page, tmp_path / "bad.png")
    assert any("bad" in message for message in rendered.console)
    assert any("missing is not defined" in message for message in rendered.console)


def test_thread_report_of_a_solve_run(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted_server(scripted, {"default": SCRIPT})
    db = tmp_path / "runs.db"
    solve = ["solve", PROBLEM, "--base-url", server.base_url, "--model", "scripted-model", "--db", str(db)]
    solved = run_kflow([*solve, "--iterations", "5", "--prompts", PAPER_SET, "--thread-id", "t1"])
    assert solved.returncode == 0, solved.stderr
    assert "model: scripted-model" in solved.stdout  # the summary says which model answered
    folder = tmp_path / "thread-html"
    proc = run_kflow(["report", "t1", "--db", str(db), "--html", str(folder)])
    assert proc.returncode == 0, proc.stderr
    assert f"html report: {folder / 'index.html'}" in " ".join(proc.stdout.split())
    rendered = render(folder / "index.html", tmp_path / "thread.png")
    assert rendered.console == []
    dom = Elements(rendered.dom)
    assert len(dom.find("img", id="plot")) == 1
    assert len(dom.find("details", **{"class": "trajectory"})) == 1
    # the knowledge list as it grew: empty after rollout 0, one item after rollout 1 (not 5), two after 3
    assert "after rollout 0: (empty)" in rendered.dom
    assert "after rollout 3: 2 items" in rendered.dom
    check_links(folder, folder / "index.html", dom)


@pytest.mark.parametrize("target", ["file", "missing-thread"])
def test_html_bad_input(scripted: type[ScriptedServer], tmp_path: Path, target: str) -> None:
    server = scripted_server(scripted, {"default": SCRIPT})
    evaluate(server, tmp_path, "kf")
    before = sorted(p.name for p in tmp_path.iterdir())
    blocker = tmp_path / "a-file"
    if target == "file":
        blocker.write_text("x")
        args = ["report", "kf", "--html", str(blocker)]
        message = "is a file, not a folder"
    else:
        args = ["report", "nothing-here", "--html", str(tmp_path / "html")]
        message = "no evaluation run or thread 'nothing-here'"
    proc = run_kflow([*args, "--db", str(tmp_path / "eval.db"), "--out", str(tmp_path / "png")])
    assert proc.returncode == 2
    assert message in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p != blocker) == before  # nothing written


def test_figures_frames(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted_server(scripted, {PROBLEM: SCRIPT, HOSTILE: HOSTILE_SCRIPT, "default": SCRIPT})
    evaluate(server, tmp_path, "kf")
    store = get_store(tmp_path / "eval.db")
    rollouts = rollouts_frame(store, eval_id="kf")
    assert len(rollouts) == 6
    assert list(rollouts[rollouts.position == 1].answer) == ["3", "4", "4"]
    assert list(rollouts[rollouts.position == 1].correct) == [False, True, True]
    assert rollouts[rollouts.position == 1].knowledge_added.iloc[1]["wrong_answer"] == "3"
    iterations = iterations_frame(store, "kf")
    assert list(iterations.iteration) == [0, 1, 2]
    assert list(iterations.pass_at_1) == [0.0, 0.5, 0.5]
    assert (iterations.pass_at_1_low <= iterations.pass_at_1).all()
    assert (iterations.pass_at_1 <= iterations.pass_at_1_high).all()
    problems = problems_frame(store, "kf")
    assert list(problems.gold) == ["9", "4"]
    assert problems.first_right_iteration.isna().iloc[0] and problems.first_right_iteration.iloc[1] == 1
    assert list(problems.knowledge_items) == [1, 1]
    by_run = rollouts_frame(store, run_ids=[str(problems.run_id[0])])
    assert len(by_run) == 3 and by_run.correct.isna().all()  # without an evaluation there is no gold answer
    with pytest.raises(ValueError, match="either eval_id or run_ids"):
        rollouts_frame(store)


def test_thread_report_refuses_a_damaged_store(scripted: type[ScriptedServer], tmp_path: Path) -> None:
    server = scripted_server(scripted, {"default": SCRIPT})
    db = tmp_path / "runs.db"
    solve = ["solve", PROBLEM, "--base-url", server.base_url, "--model", "m", "--iterations", "3", "--db", str(db)]
    assert run_kflow([*solve, "--prompts", PAPER_SET, "--thread-id", "t1"]).returncode == 0
    with sqlite3.connect(db) as conn:  # an altered rollout: its seal no longer matches
        conn.execute("UPDATE kf_rollouts SET completion_tokens = completion_tokens + 1 WHERE iteration = 1")
    folder = tmp_path / "thread-html"
    proc = run_kflow(["report", "t1", "--db", str(db), "--html", str(folder), "--json"])
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["status"] == "damaged"
    assert "damaged" in proc.stderr and "iteration 1" in proc.stderr
    assert not folder.exists()  # nothing written
