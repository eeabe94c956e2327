"""The problems `kflow demo` solves: a few GSM8K problems chosen once, here, with the reason for each.

They come from ``gsm8k_dev.jsonl``, the first 200 rows of the GSM8K test split (openai/grade-school-math,
``grade_school_math/data/test.jsonl``, MIT; the id is the 0-based row number; the gold answer is the text
after ``####``). In a checkout the demo reads them from that file, found where the tests find it
(``<checkout>/../shared/datasets/gsm8k_dev.jsonl``); an installed package has no checkout around it, so the
same rows ship inside the package (``knowledge_flow/data/gsm8k_demo.jsonl``) and are used instead, and the
demo says which it read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import knowledge_flow

#: The sample file of the checkout (the tests' ``REPO.parent / "shared" / "datasets"``).
CHECKOUT_DATASET = Path(knowledge_flow.__file__).resolve().parents[2].parent / "shared" / "datasets" / "gsm8k_dev.jsonl"
PACKAGED = "gsm8k_demo.jsonl"


@dataclass(frozen=True)
class DemoProblem:
    id: int
    """The row of gsm8k_dev.jsonl (0-based)."""
    reason: str
    """Why this problem is in the demo (what was measured on it)."""


#: Chosen on 2026-12-07 by running ten candidates with the demo's own settings (the packaged 1.5B model on
#: llama.cpp, prompt set kf-instruct-paper, seed 1, 4 rollouts of at most 512 tokens, temperature 0.6; 2-core
#: x86_64), answers per rollout: 2: 70000 x4; 4: 120 x4; 7: 120 x4; 8: 415 x4; 9: 460 x4 (the answer never
#: changed, the list stayed empty); 11: 694, 794, 794, 794 (a right answer listed as wrong and lost); 12: 12, 12,
#: 12, 12.67 (one item, in the last rollout); 13: 6, 9, 9, 9 (an item, the gold 18 never reached); 5 and 10,
#: below, are the two on which an answer was listed as wrong and then corrected. They show what the method does,
#: not how well: on 30 problems the paper's rules lowered this model's accuracy (docs/accuracy.md).
DEMO_PROBLEMS: tuple[DemoProblem, ...] = (
    DemoProblem(
        5,
        "Kylar's glasses, gold 64. Measured: 64, 60, 64, 64. Rollout 1 changes the answer to 60 and its error "
        "report puts 64 on the list; rollout 2, shown the list, returns to 64 and puts 60 on it.",
    ),
    DemoProblem(
        10,
        "A program's downloads over three months, gold 366. Measured: 366, 366, 84, 366. Two rollouts agree, the "
        "third breaks the answer (84, listing 366 as wrong), the fourth repairs it and lists 84.",
    ),
)


@dataclass(frozen=True)
class Loaded:
    rows: list[dict[str, Any]]
    """id, problem, answer: as in gsm8k_dev.jsonl."""
    source: str
    """Where they were read, in a sentence for the user."""


def packaged_rows() -> list[dict[str, Any]]:
    text = resources.files("knowledge_flow").joinpath("data", PACKAGED).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pick(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The demo's problems among `rows`, in the demo's order; KeyError when one is missing."""
    by_id = {int(row["id"]): row for row in rows}
    return [by_id[problem.id] for problem in DEMO_PROBLEMS]


def load_demo_problems(dataset: Path = CHECKOUT_DATASET) -> Loaded:
    """The demo's problems: from the checkout's sample file when there is one, else the package's copy."""
    ids = ", ".join(str(problem.id) for problem in DEMO_PROBLEMS)
    if dataset.is_file():
        rows = pick([json.loads(line) for line in dataset.read_text(encoding="utf-8").splitlines() if line.strip()])
        return Loaded(rows, f"GSM8K test problems {ids} from {dataset}")
    return Loaded(
        pick(packaged_rows()),
        f"GSM8K test problems {ids} from the copy shipped in the package (knowledge_flow/data/{PACKAGED}): "
        f"{dataset} is not there (not a checkout)",
    )
