"""Per-iteration prediction files in the layout of the original Knowledge Flow scripts.

``{out}/vllm_{max_new_tokens}_{output_postfix}/{model_basename}/predictions_{k}.json``: element 0 is
``{"accuracy", "total", "correct", "average_prompt_length"}`` (accuracy as a fraction of the problems; the
prompt length in tokens, as the server counted them), then one ``{"question", "gold", "predicted",
"pred_solution"}`` per problem, in dataset order: ``question`` is the prompt as sent (the messages' texts,
then the prefill), ``predicted`` an integer (or null) for integer sets.

With parallel thinkers, a problem's prediction at iteration k is the best thinker's. A problem that stopped
early (``stable:K``) keeps its final answer for the later iterations, with an empty solution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from knowledge_flow.evaluation.rows import EvalRow, EvalStore
from knowledge_flow.persistence.store import RolloutStore
from knowledge_flow.text.boxed import normalize_integer


def model_basename(model: str) -> str:
    return model.rstrip("/").split("/")[-1] or model


def predictions_dir(root: Path, manifest: dict[str, Any]) -> Path:
    params = manifest["params"]
    folder = f"vllm_{params['max_new_tokens']}_{manifest['output_postfix']}"
    return root / folder / model_basename(str(params["model"]))


def as_integer(answer: str | None) -> int | None:
    """An integer set's prediction as the original scripts wrote it: an integer, or null."""
    value = normalize_integer(answer) if answer is not None else None
    return int(value) if value is not None and len(value) < 4000 else None


def prompt_as_sent(messages: list[dict[str, str]], prefill: str | None) -> str:
    """The prompt's texts as sent: each message's text, then the prefill the generation continued."""
    return "\n\n".join([*(m["content"] for m in messages), *([prefill] if prefill else [])])


def write_predictions(store: RolloutStore, eval_row: EvalRow, root: Path, *, done_only: bool = False) -> list[Path]:
    """Write one file per iteration; returns their paths. Each file is written atomically. With `done_only`
    (an interrupted run), only the problems complete so far are in the files."""
    manifest = eval_row.manifest
    iterations = int(manifest["params"]["iterations"])
    items = [item for item in EvalStore(store).eval_items(eval_row.eval_id) if item.status == "done" or not done_only]
    chosen = store.chosen_rows([item.run_id for item in items if item.run_id])
    rows = {item.position: chosen[item.run_id] for item in items if item.run_id}
    integer = manifest["params"]["answer_type"] == "integer"
    folder = predictions_dir(root, manifest)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(iterations):
        entries: list[dict[str, Any]] = []
        correct = 0
        prompt_lengths: list[int] = []
        for item in items:
            answers, grades, prompts = item.answers, item.correct, item.prompt_tokens
            if k < len(answers):
                predicted, is_correct = answers[k], bool(grades[k])
            else:  # stopped early (or did not finish): the final answer stands
                predicted, is_correct = item.final_answer, bool(item.final_correct)
            correct += int(is_correct)
            if k < len(prompts):
                prompt_lengths.append(prompts[k])
            row = rows.get(item.position, {}).get(k)  # by iteration, never by position
            entries.append(
                {
                    "question": prompt_as_sent(row.messages, row.prefill) if row is not None else item.problem,
                    "gold": item.gold,
                    "predicted": as_integer(predicted) if integer else predicted,
                    "pred_solution": row.content if row is not None else "",
                }
            )
        total = len(items)
        head = {
            "accuracy": correct / total if total else 0.0,
            "total": total,
            "correct": correct,
            "average_prompt_length": sum(prompt_lengths) / len(prompt_lengths) if prompt_lengths else 0.0,
        }
        path = folder / f"predictions_{k}.json"
        partial = path.with_suffix(f".json.{os.getpid()}.partial")
        partial.write_text(json.dumps([head, *entries], ensure_ascii=False, indent=1))
        os.replace(partial, path)
        written.append(path)
    return written
