from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from knowledge_flow.persistence.compression import MIN_BYTES, CompressingSerializer, pack
from knowledge_flow.persistence.store import RolloutRow, RolloutStore, utcnow

LONG = "We count the ordered pairs (x, y) with x^2 + y^2 = 2025 by factoring over the Gaussian integers. " * 40


def test_serializer_compresses_large_values_and_round_trips() -> None:
    serde = CompressingSerializer()
    value = {"reference": LONG, "iteration": 3, "answers": ["12", None]}
    kind, data = serde.dumps_typed(value)
    plain_kind, plain = JsonPlusSerializer().dumps_typed(value)
    assert kind == plain_kind + "+zlib"
    assert len(data) < len(plain) / 5
    assert serde.loads_typed((kind, data)) == value


def test_serializer_leaves_small_values_and_reads_uncompressed_checkpoints() -> None:
    serde = CompressingSerializer()
    assert serde.dumps_typed({"iteration": 3}) == JsonPlusSerializer().dumps_typed({"iteration": 3})
    old = JsonPlusSerializer().dumps_typed({"reference": LONG})  # as written before compression existed
    assert serde.loads_typed(old) == {"reference": LONG}


def test_pack_only_when_it_pays() -> None:
    assert pack(b"x" * (MIN_BYTES - 1)) is None
    assert pack(random.Random(0).randbytes(4096)) is None  # incompressible: stored as it is
    packed = pack(LONG.encode())
    assert packed is not None and len(packed) < len(LONG) / 5


def rollout(rollout_id: str, content: str) -> RolloutRow:
    return RolloutRow(
        id=rollout_id,
        run_id="run",
        thread_id="t",
        iteration=int(rollout_id[-1]),
        index=0,
        created_at=utcnow(),
        prompt_json='[{"role": "user", "content": "' + LONG + '"}]',
        content=content,
        reasoning=None,
        summary=LONG,
    )


def test_long_texts_are_stored_compressed_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "kf.db"
    store = RolloutStore(path)
    store.create_run(run_id="run", thread_id="t", problem="p", params={}, base_url=None, package_version="0")
    store.add_rollout(rollout("run:0", LONG + "\\boxed{12}"))
    store.add_rollout(rollout("run:1", "short \\boxed{3}"))
    with sqlite3.connect(path) as conn:
        raw = dict(conn.execute("SELECT id, content FROM kf_rollouts").fetchall())
        # a row written before compression existed (schema 2): plain text
        conn.execute("UPDATE kf_rollouts SET summary = ? WHERE id = 'run:1'", ("plain old summary " * 30,))
    assert isinstance(raw["run:0"], bytes) and len(raw["run:0"]) < len(LONG) / 5
    assert raw["run:1"] == "short \\boxed{3}"  # short texts stay readable text
    rows = store.rollouts("run")
    assert [row.content for row in rows] == [LONG + "\\boxed{12}", "short \\boxed{3}"]
    assert rows[0].messages == [{"role": "user", "content": LONG}]
    assert rows[1].summary == "plain old summary " * 30
    store.close()
