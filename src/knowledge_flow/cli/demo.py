"""`kflow demo`: a sample GSM8K problem solved on the local CPU model server (what `make demo` runs)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from knowledge_flow.cli.common import err, fail
from knowledge_flow.cli.run import run_solve
from knowledge_flow.context import DEFAULT_LOCAL_BASE_URL

SAMPLE_PROBLEM = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
    "egg. How much in dollars does she make every day at the farmers' market?"
)

#: The model `kflow demo` starts: on the sample problems of the README's measurements the 1.5B model answers
#: most GSM8K problems and follows the output format, while the 0.5B model mostly copies the format's
#: placeholders; the 1.5B model takes about 1-2 minutes for the demo's 3 rollouts on two cores.
DEMO_MODEL = "qwen2.5-coder-1.5b"


def demo(
    db: Annotated[str, typer.Option("--db", help="SQLite file for the demo run.")] = "kflow-demo.db",
    iterations: Annotated[int, typer.Option(help="Rollouts.")] = 3,
    model: Annotated[
        str | None,
        typer.Option(help=f"Packaged model to start (default {DEMO_MODEL}, or the 0.5B model without its extra)."),
    ] = None,
) -> None:
    """Solve a sample GSM8K problem on the local CPU model server (3 rollouts).

    A server already running on the local port is used with the model it serves; otherwise the packaged
    1.5B model is started for the demo (the 0.5B one when the `local-1.5b` extra is not installed)."""
    from knowledge_flow.server_launch.local import served_model, start_local
    from knowledge_flow.server_launch.model_files import QWEN_05B, ModelError, installed, packaged_model
    from knowledge_flow.server_launch.process import ServerError, ServerProcess, models_ready

    server: ServerProcess | None = None
    try:
        if models_ready(DEFAULT_LOCAL_BASE_URL):
            name = served_model(DEFAULT_LOCAL_BASE_URL)
            if name is None:
                raise fail(f"the server at {DEFAULT_LOCAL_BASE_URL} does not serve exactly one model")
            if model is not None and packaged_model(model).served_name != name:
                raise fail(f"the local server runs {name}; stop it with `kflow serve stop` to demo {model}")
            err.print(f"using the local model server already running at {DEFAULT_LOCAL_BASE_URL} ({name})")
        else:
            chosen = packaged_model(model or DEMO_MODEL)
            if model is None and not installed(chosen):
                err.print(
                    f"{chosen.name} is not installed ({chosen.install_hint}); using {QWEN_05B.name}, "
                    "which gets most such problems wrong"
                )
                chosen = QWEN_05B
            server = start_local(model=chosen.name, write_pid_file=False, progress=lambda m: err.print(f"  {m}"))
            name = server.model or chosen.served_name
    except ModelError as exc:
        raise fail(str(exc)) from None
    except ServerError as exc:
        raise fail(str(exc), code=1) from None
    err.print(Text(f"problem: {SAMPLE_PROBLEM}"))
    try:
        run_solve(
            SAMPLE_PROBLEM,
            base_url=DEFAULT_LOCAL_BASE_URL,
            db=db,
            thread_id=None,
            as_json=False,
            params={"model": name, "iterations": iterations, "max_new_tokens": 512, "temperature": 0.6, "top_p": 1.0},
        )
    finally:
        if server is not None:
            server.stop()
