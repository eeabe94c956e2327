"""`kflow`: the command line. Commands live one group per module; they are registered here, in one place.

- `run`: solve, resume; `demo`: demo; `inspect`: show, threads;
- `evaluate`: eval; `report`: report;
- `serve`: serve vllm | local | stop;
- `prompts`: prompts list | show | export.

Every module imports only light libraries at import time, so `kflow --help` and argument errors answer at
once; each command imports LangGraph, the endpoint layer or the database when it runs.
"""

from __future__ import annotations

import typer

from knowledge_flow.cli import demo, evaluate, inspect, prompts, report, run, serve

app = typer.Typer(
    help="Knowledge Flow: solve hard problems in many rollouts that pass knowledge, not context.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(run.solve)
app.command()(run.resume)
app.command()(inspect.show)
app.command()(inspect.threads)
app.command()(demo.demo)
app.command("eval")(evaluate.evaluate)
app.command()(report.report)

serve_app = typer.Typer(help="Start and stop model servers.", no_args_is_help=True)
serve_app.command("vllm")(serve.serve_vllm)
serve_app.command("local")(serve.serve_local)
serve_app.command("stop")(serve.serve_stop)
app.add_typer(serve_app, name="serve")

prompts_app = typer.Typer(help="Prompt sets: list, show and export the built-in ones.", no_args_is_help=True)
prompts_app.command("list")(prompts.prompts_list)
prompts_app.command("show")(prompts.prompts_show)
prompts_app.command("export")(prompts.prompts_export)
app.add_typer(prompts_app, name="prompts")


def main() -> None:
    """Run the command; a failure of the database (damaged, read-only or full) ends it with one line, exit 1."""
    try:
        app()
    except Exception as exc:
        from knowledge_flow.cli.common import current_db, database_failure, fail

        problem = database_failure(exc, current_db())
        if problem is None:
            raise
        raise SystemExit(fail(problem, code=1).exit_code) from None


__all__ = ["app", "main"]
