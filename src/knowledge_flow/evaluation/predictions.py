"""Per-iteration prediction files in the layout of the original Knowledge Flow scripts.

``{out}/vllm_{max_new_tokens}_{output_postfix}/{model_basename}/predictions_{k}.json``: element 0 is
``{"accuracy", "total", "correct", "average_prompt_length"}`` (accuracy as a fraction of the problems),
then one ``{"question", "gold", "predicted", "pred_solution"}`` per problem, in dataset order.

With parallel thinkers, a problem's prediction at iteration k is the best thinker's. A problem that stopped
early (``stable:K``) keeps its final answer for the later iterations, with an empty solution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from knowledge_flow.persistence.store import EvalRow, Store


def model_basename(model: str) -> str:
    return model.rstrip("/").split("/")[-1] or model


def predictions_dir(root: Path, manifest: dict[str, Any]) -> Path:
    params = manifest["params"]
    folder = f"vllm_{params['max_new_tokens']}_{manifest['output_postfix']}"
    return root / folder / model_basename(str(params["model"]))


def write_predictions(store: Store, eval_row: EvalRow, root: Path) -> list[Path]:
    """Write one file per iteration; returns their paths. Each file is written atomically."""
    manifest = eval_row.manifest
    iterations = int(manifest["params"]["iterations"])
    items = store.eval_items(eval_row.eval_id)
    outputs = store.chosen_outputs([item.run_id for item in items if item.run_id])
    solutions = {item.position: outputs[item.run_id] for item in items if item.run_id}
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
            texts = solutions.get(item.position, [])
            entries.append(
                {
                    "question": item.problem,
                    "gold": item.gold,
                    "predicted": predicted,
                    "pred_solution": texts[k] if k < len(texts) else "",
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
