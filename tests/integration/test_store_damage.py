"""R3 for the store: random damage to a finished evaluation's SQLite file (bits flipped anywhere, the file cut
off, rows deleted, values overwritten, a compressed value broken) gives either the very report the intact
file gives, or a clear "damaged" refusal: never different numbers (property-based, hypothesis)."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from knowledge_flow.cli.common import database_failure
from knowledge_flow.cli.inspect import run_damage
from knowledge_flow.evaluation.report import build_report
from knowledge_flow.persistence.store import RolloutStore, SchemaError
from tests.conftest import run_kflow
from tests.integration.test_reliability import dataset_of, eval_cmd
from tests.support.eval_script import iteration_of
from tests.support.scripted_server import Reply, Request, ScriptedServer, kf_output

EVAL = "dmg"
RULES = ("default", "last-boxed")
PADDING = " The divisors were counted twice, once from each end of the list, and the two counts agree." * 4


def responder(order: list[str]) -> Any:
    """Answers that change (the lists grow), some rollouts failed (a refused request), outputs long enough to
    be stored compressed, two thinkers per iteration."""

    def respond(request: Request) -> Reply:
        k = iteration_of(request.prompt)
        position = order.index(request.key)
        if position == 2 and k == 1:
            return Reply(content="", status=400)
        answer = str((position * 7 + k * 3 + request.choice) % 50)
        report = "N/A" if k == 0 else f"The Answer cannot be {(position * 7 + (k - 1) * 3) % 50}, because of step {k}."
        return Reply(content=kf_output(answer, f"ITER-{k}: the answer is {answer}.{PADDING}", report))

    return respond


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """A finished evaluation (4 problems, 3 iterations, 2 thinkers), its reports and its runs' rollouts."""
    folder = tmp_path_factory.mktemp("damage")
    dataset, order, _ = dataset_of(folder, 4)
    server = ScriptedServer(responder(order), keys=order).start()
    try:
        db = folder / "intact.db"
        args = eval_cmd(server.base_url, dataset, db, folder / "out", EVAL, 3, "--thinkers", "2")
        proc = run_kflow([*args, "--max-retries", "0"])
        assert proc.returncode == 0, proc.stderr
    finally:
        server.stop()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert conn.execute("SELECT count(*) FROM kf_rollouts WHERE error IS NOT NULL").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM kf_rollouts WHERE typeof(content) = 'blob'").fetchone()[0] >= 20
    conn.close()
    store = RolloutStore(db)
    reports = {rule: build_report(store, EVAL, rule).to_json() for rule in RULES}
    rollouts = {run.thread_id: rows_of(store, run.run_id) for run in store.list_runs()}
    store.close()
    yield db, reports, rollouts


def rows_of(store: RolloutStore, run_id: str) -> list[tuple[Any, ...]]:
    return [
        (r.iteration, r.index, r.answer, r.rank, r.prompt_tokens, r.completion_tokens, r.finish_reason, r.error)
        for r in store.rollouts(run_id)
    ]


COPIES = itertools.count()


def flip_bits(path: Path, flips: list[tuple[float, int]]) -> None:
    data = bytearray(path.read_bytes())
    for where, bit in flips:
        data[int(where * (len(data) - 1))] ^= 1 << bit
    path.write_bytes(bytes(data))


def cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def in_sql(path: Path, statement: str, parameters: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(statement, parameters)
        conn.commit()
    finally:
        conn.close()


TABLES = ("kf_rollouts", "kf_eval_items", "kf_runs", "kf_evals")
VALUES = st.one_of(
    st.none(), st.integers(-3, 10**6), st.text(max_size=12), st.binary(max_size=12), st.floats(allow_nan=False)
)
DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=8)),
    st.tuples(st.just("cut"), st.floats(0.05, 0.999)),
    st.tuples(st.just("delete"), st.sampled_from(TABLES), st.integers(0, 40)),
    st.tuples(st.just("set"), st.sampled_from(TABLES), st.integers(0, 40), st.integers(0, 60), VALUES),
    st.tuples(st.just("blob"), st.integers(0, 40), st.integers(0, 200)),
)


def damage(path: Path, what: tuple[Any, ...]) -> None:
    kind = what[0]
    if kind == "flip":
        flip_bits(path, what[1])
    elif kind == "cut":
        cut(path, what[1])
    elif kind == "delete":
        _, table, row = what
        in_sql(path, f"DELETE FROM {table} WHERE rowid = (SELECT rowid FROM {table} LIMIT 1 OFFSET ?)", (row,))
    elif kind == "set":
        _, table, row, column, value = what
        conn = sqlite3.connect(path)
        columns = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
        conn.close()
        name = columns[column % len(columns)]
        statement = f'UPDATE {table} SET "{name}" = ? WHERE rowid = (SELECT rowid FROM {table} LIMIT 1 OFFSET ?)'
        with contextlib.suppress(sqlite3.IntegrityError):  # a NOT NULL or key constraint: the file is unchanged
            in_sql(path, statement, (value, row))
    else:
        _, row, offset = what
        conn = sqlite3.connect(path)
        found = conn.execute(
            "SELECT rowid, content FROM kf_rollouts WHERE typeof(content) = 'blob' LIMIT 1 OFFSET ?", (row % 20,)
        ).fetchone()
        conn.close()
        blob = bytearray(found[1])
        blob[offset % len(blob)] ^= 0x20
        in_sql(path, "UPDATE kf_rollouts SET content = ? WHERE rowid = ?", (bytes(blob), found[0]))


def refused_clearly(exc: BaseException) -> bool:
    message = database_failure(exc)
    return message is not None and "\n" not in message and message.strip() != ""


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(what=DAMAGE, rule=st.sampled_from(RULES))
def test_a_damaged_store_gives_the_right_report_or_says_it_is_damaged(
    finished: tuple[Path, dict[str, Any], dict[str, Any]], what: tuple[Any, ...], rule: str
) -> None:
    intact, reports, rollouts = finished
    path = intact.with_name(f"copy-{next(COPIES)}.db")
    shutil.copyfile(intact, path)
    damage(path, what)
    try:
        store = RolloutStore(path)
    except (ValueError, SchemaError) as exc:  # refused on opening: not SQLite, cut off, of something else
        assert "\n" not in str(exc) and str(exc)
        event("refused on opening")
        return
    except Exception as exc:
        assert refused_clearly(exc), repr(exc)
        event("refused on opening")
        return
    try:
        try:
            report = build_report(store, EVAL, rule).to_json()
        except Exception as exc:
            assert refused_clearly(exc), repr(exc)
            event("report: damaged")
        else:
            assert report == reports[rule], what  # never other numbers
            event("report: the intact figures")
        try:
            runs = list(store.list_runs())
        except Exception as exc:
            assert refused_clearly(exc), repr(exc)
            runs = []
        for run in runs:  # what `kflow show` prints of each run
            try:
                problem = run_damage(str(path), store, run)
                shown = rows_of(store, run.run_id) if problem is None else None
            except Exception as exc:
                assert refused_clearly(exc), repr(exc)
                continue
            assert shown is None or shown == rollouts[run.thread_id], what
    finally:
        store.close()
        path.unlink(missing_ok=True)


def test_the_intact_file_is_not_called_damaged(finished: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    intact, reports, _ = finished
    store = RolloutStore(intact)
    try:
        for run in store.list_runs():
            assert run_damage(str(intact), store, run) is None
        assert build_report(store, EVAL, "default").to_json() == reports["default"]
        payload = reports["default"]
        assert payload["finished"] == 4 and payload["failed_rollouts"] == 4 and payload["rollouts_done"] == 4 * 3 * 2
        assert json.dumps(payload)  # plain JSON
    finally:
        store.close()


def test_each_kind_of_damage_is_found(finished: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    """Damage that changes what a report reads is named, never graded (cases a random search may miss)."""
    intact, _, _ = finished
    cases = [
        "UPDATE kf_rollouts SET completion_tokens = completion_tokens + 1 WHERE thread_id = 'dmg:1' AND iteration = 2",
        "UPDATE kf_rollouts SET finish_reason = 'length' WHERE thread_id = 'dmg:0' AND iteration = 0",
        'UPDATE kf_eval_items SET answers_json = \'["1", "2", "3"]\' WHERE position = 3',
        "UPDATE kf_eval_items SET correct_json = '[true, true, true]' WHERE position = 0",
        "DELETE FROM kf_rollouts WHERE thread_id = 'dmg:2' AND iteration = 1 AND \"index\" = 1",
        "DELETE FROM kf_rollouts WHERE thread_id = 'dmg:3' AND iteration = 2",
        "UPDATE kf_evals SET manifest_json = replace(manifest_json, '\"iterations\": 3', '\"iterations\": 4')",
    ]
    for statement in cases:
        path = intact.with_name(f"case-{next(COPIES)}.db")
        shutil.copyfile(intact, path)
        in_sql(path, statement)
        store = RolloutStore(path)
        try:
            for rule in RULES:
                with pytest.raises(Exception) as caught:
                    build_report(store, EVAL, rule)
                assert refused_clearly(caught.value) and "evaluation dmg: " in str(caught.value), statement
        finally:
            store.close()
