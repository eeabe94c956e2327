"""Benchmark datasets through Hugging Face `datasets`: built-in names, ``hf:`` specs and local files.

Every problem becomes ``Problem(id, problem, gold)``. Problems are validated before anything runs: a missing
column, an empty set, an empty problem or a non-integer gold answer in an integer set is a `DatasetError`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowledge_flow.records import AnswerType
from knowledge_flow.text.boxed import normalize_integer
from knowledge_flow.user_files import (
    MAX_DATASET_BYTES,
    UserFileError,
    check_problem,
    check_text,
    read_bytes,
    require_regular,
)


class DatasetError(ValueError):
    """The dataset cannot be used; the message says why."""


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    gold: str


@dataclass(frozen=True)
class Builtin:
    path: str
    config: str | None
    split: str
    problem_field: str
    answer_field: str
    answer_type: AnswerType
    gsm8k_answer: bool = False


#: The sets the field uses, by short name.
BUILTINS: dict[str, Builtin] = {
    "aime25": Builtin("yentinglin/aime_2025", None, "train", "problem", "answer", "integer"),
    "aime24": Builtin("HuggingFaceH4/aime_2024", None, "train", "problem", "answer", "integer"),
    "gsm8k": Builtin("openai/gsm8k", "main", "test", "question", "answer", "integer", gsm8k_answer=True),
    "math500": Builtin("HuggingFaceH4/MATH-500", None, "test", "problem", "answer", "latex"),
}

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class LoadedDataset:
    name: str
    problems: list[Problem]
    answer_type: AnswerType

    @property
    def content_hash(self) -> str:
        """SHA-256 of the problems used (ids, texts and gold answers, in order)."""
        payload = json.dumps([[p.id, p.problem, p.gold] for p in self.problems], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


def gsm8k_gold(answer: str) -> str:
    """GSM8K's gold answer: the text after ``####``, thousands separators removed."""
    return answer.split("####")[-1].strip().replace(",", "")


def _quiet_datasets() -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors are reported as one line
    return datasets


def _check_local_file(path: Path) -> str:
    builder = LOCAL_SUFFIXES.get(path.suffix.lower())
    try:
        require_regular(path, "dataset file")
        if builder is None:
            raise DatasetError(f"dataset file {str(path)!r} must end in .jsonl, .json or .parquet")
        data = read_bytes(path, MAX_DATASET_BYTES, "dataset file")
    except UserFileError as exc:
        raise DatasetError(str(exc)) from None
    if not data.strip():
        raise DatasetError(f"dataset file {str(path)!r} is empty")
    if builder == "json":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"dataset file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if path.suffix.lower() == ".jsonl":
            for number, line in enumerate(lines, start=1):
                try:
                    storable(json.loads(line), f"{path}: line {number}")
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
        else:
            try:
                storable(json.loads(text), str(path))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return builder


def storable(value: Any, where: str) -> None:
    """Refuse JSON whose strings cannot be stored: a ``\\ud800`` escape decodes to a lone surrogate."""
    try:
        check_text(json.dumps(value, ensure_ascii=False), where)
    except UserFileError:
        raise DatasetError(
            f"{where} is not UTF-8 text: it holds a lone surrogate (an escape such as \\ud800)"
        ) from None


def _rows_from_local(path: Path) -> list[dict[str, Any]]:
    builder = _check_local_file(path)
    datasets = _quiet_datasets()
    with tempfile.TemporaryDirectory(prefix="kflow-dataset-") as cache:  # leave no cache files behind
        try:
            table = datasets.load_dataset(
                builder, data_files=str(path), split="train", keep_in_memory=True, cache_dir=cache
            )
        except Exception as exc:  # pyarrow/datasets raise many types for malformed files
            raise DatasetError(f"cannot load {str(path)!r}: {exc}") from None
        return [dict(row) for row in table]


def _rows_from_hub(path: str, config: str | None, split: str) -> list[dict[str, Any]]:
    datasets = _quiet_datasets()
    try:
        table = datasets.load_dataset(path, config, split=split)
    except Exception as exc:
        raise DatasetError(f"cannot load {path}{f' ({config})' if config else ''} split {split!r}: {exc}") from None
    return [dict(row) for row in table]


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:ORG/NAME[:config][:split]`` -> (path, config, split); the split defaults to test."""
    parts = spec[3:].split(":")
    if not parts[0] or "/" not in parts[0] or len(parts) > 3:
        raise DatasetError(f"expected hf:ORG/NAME[:config][:split], got {spec!r}")
    path = parts[0]
    config = parts[1] or None if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 and parts[2] else "test"
    return path, config, split


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def detect_answer_type(golds: Sequence[str]) -> AnswerType:
    return "integer" if golds and all(normalize_integer(g) is not None for g in golds) else "latex"


def load_problems(
    name_or_path: str,
    *,
    problem_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    answer_type: AnswerType | None = None,
    limit: int | None = None,
) -> LoadedDataset:
    """Load, map and validate a dataset. Raises `DatasetError` with a message meant for the user."""
    builtin = BUILTINS.get(name_or_path)
    gsm8k = False
    if builtin is not None:
        rows = _rows_from_hub(builtin.path, builtin.config, builtin.split)
        problem_key = problem_field or builtin.problem_field
        answer_key = answer_field or builtin.answer_field
        answer_type = answer_type or builtin.answer_type
        gsm8k = builtin.gsm8k_answer
    elif name_or_path.startswith("hf:"):
        rows = _rows_from_hub(*parse_hf_spec(name_or_path))
        problem_key, answer_key = problem_field or "problem", answer_field or "answer"
    else:
        path = Path(name_or_path).expanduser()
        if path.suffix.lower() not in LOCAL_SUFFIXES and not path.exists():
            raise DatasetError(
                f"unknown dataset {name_or_path!r}: use {', '.join(BUILTINS)}, hf:ORG/NAME[:config][:split], "
                "or a .jsonl/.json/.parquet file"
            )
        rows = _rows_from_local(path)
        problem_key, answer_key = problem_field or "problem", answer_field or "answer"
    if not rows:
        raise DatasetError(f"dataset {name_or_path!r} has no rows")
    columns = set(rows[0])
    missing = [key for key in (problem_key, answer_key, id_field) if key and key not in columns]
    if missing:
        raise DatasetError(
            f"dataset {name_or_path!r} has no column {', '.join(repr(m) for m in missing)} "
            f"(columns: {', '.join(sorted(columns))}); name them with --problem-field/--answer-field/--id-field"
        )
    if limit is not None:
        if limit < 1:
            raise DatasetError("--limit must be at least 1")
        rows = rows[:limit]
    problems = []
    for index, row in enumerate(rows):
        problem = _text(row.get(problem_key))
        gold = _text(row.get(answer_key))
        if gsm8k:
            gold = gsm8k_gold(gold)
        ident = _text(row.get(id_field or "id")) or str(index)
        if not problem:
            raise DatasetError(f"dataset {name_or_path!r}, row {index}: the problem is empty")
        if not gold:
            raise DatasetError(f"dataset {name_or_path!r}, row {index}: the gold answer is empty")
        try:
            check_problem(problem, f"dataset {name_or_path!r}, row {index}: the problem")
            check_text(gold, f"dataset {name_or_path!r}, row {index}: the gold answer")
            check_text(ident, f"dataset {name_or_path!r}, row {index}: the id")
        except UserFileError as exc:
            raise DatasetError(str(exc)) from None
        problems.append(Problem(id=ident, problem=problem, gold=gold))
    kind = answer_type or detect_answer_type([p.gold for p in problems])
    if kind == "integer":
        for index, item in enumerate(problems):
            value = normalize_integer(item.gold)
            if value is None:
                raise DatasetError(
                    f"dataset {name_or_path!r}, row {index} (id {item.id}): gold answer {item.gold!r} is not an "
                    "integer, but this is an integer-answer set (use --answer-type latex for free-form answers)"
                )
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"dataset {name_or_path!r}: id {duplicate!r} appears more than once")
    display = name_or_path if builtin or name_or_path.startswith("hf:") else re.sub(r"\s", "_", name_or_path)
    return LoadedDataset(name=display, problems=problems, answer_type=kind)
