"""A stand-in `vllm` executable: `vllm serve MODEL --host H --port P ...` serves the OpenAI API.

It prints its arguments and the VLLM_* environment to its log. FAKE_VLLM_MODE=die exits with code 3 at
start, after an error message; FAKE_VLLM_MODE=slow waits FAKE_VLLM_DELAY seconds before it serves.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from tests.support.scripted_server import Reply, ScriptedServer


def main() -> None:
    args = sys.argv[1:]
    print("fake vllm argv:", " ".join(args), flush=True)
    print(
        "fake vllm env:",
        " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("VLLM_")),
        flush=True,
    )
    if not args or args[0] != "serve":
        print("usage: vllm serve MODEL", flush=True)
        sys.exit(2)
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    if mode == "die":
        print("ValueError: the model does not fit in GPU memory", flush=True)
        sys.exit(3)
    if mode == "slow":
        time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "2")))
    host = args[args.index("--host") + 1]
    port = int(args[args.index("--port") + 1])
    server = ScriptedServer(lambda _r: Reply(content="[Summary]: s\n[Answer]: \\boxed{1}"), model=args[1])
    server.httpd.server_close()
    from http.server import ThreadingHTTPServer

    server.httpd = ThreadingHTTPServer((host, port), server.httpd.RequestHandlerClass)
    server.httpd.daemon_threads = True
    threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
    print(f"serving on {host}:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
