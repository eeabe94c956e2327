"""`kflow report ... --html DIR`: the HTML report of evaluation runs, or of one thread's run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from knowledge_flow.cli.common import UsageError, out, write_json

if TYPE_CHECKING:
    from knowledge_flow.evaluation.compare import RunComparison
    from knowledge_flow.evaluation.report import EvalReport
    from knowledge_flow.persistence.store import RolloutStore


def html_folder(html: str) -> Path:
    """The report's folder (created when written); UsageError when the path is a file."""
    folder = Path(html).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder; choose another --html")
    return folder


def write_evaluations(
    store: RolloutStore, reports: list[EvalReport], comparison: list[RunComparison], html: str
) -> Path:
    from knowledge_flow.evaluation.html import write_evaluation_report

    return write_evaluation_report(store, reports, comparison, html_folder(html))


def thread_page(store: RolloutStore, db_path: str, thread_id: str, html: str, as_json: bool) -> None:
    """The HTML report of a thread's latest run (`kflow solve`, or one problem of an evaluation: then with its
    gold answer). UsageError when the database has no such thread; `StoreDamaged` (nothing written) when the
    run's stored rows cannot be trusted (as `kflow show` finds it)."""
    from knowledge_flow.cli.inspect import run_damage
    from knowledge_flow.evaluation.html import write_thread_report
    from knowledge_flow.evaluation.rows import EvalStore
    from knowledge_flow.persistence.seals import StoreDamaged

    run = store.latest_run(thread_id)
    if run is None:
        raise UsageError(f"no evaluation run or thread {thread_id!r} in {db_path}")
    damage = run_damage(db_path, store, run)
    if damage is not None:
        raise StoreDamaged(damage)
    folder = html_folder(html)
    item = EvalStore(store).eval_item_of_thread(thread_id)
    page = write_thread_report(store, run, item.gold if item is not None else None, folder)
    if as_json:
        write_json({"thread_id": thread_id, "run_id": run.run_id, "status": run.status, "html": str(page)})
        return
    out.print(Text(f"html report: {page}"))
