"""A simulated vLLM server: real HTTP on 127.0.0.1 speaking the OpenAI chat completions API.

How it shares decode throughput (processor sharing, as vLLM's continuous batching does to first order):
each request draws a completion length from a seeded lognormal distribution; every active sequence decodes
at min(s_max, R / active) tokens per second; at most C sequences are active, the rest wait in FIFO order.
Time is scaled: `time_scale` simulated seconds pass per real second.

A request's length depends only on (seed, problem, iteration), never on arrival order, so two clients (the
product and a baseline loop) replaying the same run get the same draws. The problem is read from
"[P<n>]" in the prompt, the iteration from "ROLLOUT-<k>" in the reference solution (each reply's summary
carries its own marker). Replies are well-formed Knowledge Flow outputs.

`GET /stats` returns every request: problem, iteration, drawn tokens, simulated start and end.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import random
import re
import string
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PROBLEM = re.compile(r"\[P(\d+)\]")
_ROLLOUT = re.compile(r"ROLLOUT-(\d+)")


@dataclass
class SimParams:
    s_max: float = 150.0
    rate: float = 6000.0
    max_active: int = 256
    sigma: float = 0.9
    median_tokens: float = 1200.0
    time_scale: float = 20.0
    seed: int = 0
    change_every: int = 1
    """Replies change their answer every this many iterations (B5: often)."""
    summary_words: int = 250
    """Words of prose in each reply's summary (a reasoning model's summaries run to a few hundred tokens)."""
    report_words: int = 90
    """Words of prose in each error report of a changed answer."""


@dataclass
class Sequence:
    problem: int
    iteration: int
    tokens: int
    remaining: float
    done: threading.Event = field(default_factory=threading.Event)
    start_sim: float = 0.0
    end_sim: float = 0.0


class Scheduler:
    """Exact processor sharing in simulated time, driven by the next completion or arrival."""

    def __init__(self, params: SimParams) -> None:
        self.params = params
        self.active: list[Sequence] = []
        self.queue: deque[Sequence] = deque()
        self.finished: list[Sequence] = []
        self.cond = threading.Condition()
        self.t0 = time.monotonic()
        self.last = 0.0
        threading.Thread(target=self._loop, daemon=True).start()

    def now(self) -> float:
        return (time.monotonic() - self.t0) * self.params.time_scale

    def per_sequence_rate(self) -> float:
        n = len(self.active)
        return min(self.params.s_max, self.params.rate / n) if n else 0.0

    def _advance(self) -> None:
        now = self.now()
        rate = self.per_sequence_rate()
        elapsed = now - self.last
        self.last = now
        still = []
        for seq in self.active:
            seq.remaining -= rate * elapsed
            if seq.remaining <= 1e-6:
                seq.end_sim = now
                self.finished.append(seq)
                seq.done.set()
            else:
                still.append(seq)
        self.active = still
        while self.queue and len(self.active) < self.params.max_active:
            seq = self.queue.popleft()
            seq.start_sim = now
            self.active.append(seq)

    def submit(self, seq: Sequence) -> None:
        with self.cond:
            self._advance()
            self.queue.append(seq)
            self._advance()
            self.cond.notify()
        seq.done.wait()

    def _loop(self) -> None:
        with self.cond:
            while True:
                self._advance()
                rate = self.per_sequence_rate()
                if self.active and rate > 0:
                    next_sim = min(seq.remaining for seq in self.active) / rate
                    self.cond.wait(timeout=max(next_sim / self.params.time_scale, 0.0005))
                else:
                    self.cond.wait(timeout=1.0)


def draw_tokens(params: SimParams, problem: int, iteration: int) -> int:
    rng = random.Random(f"{params.seed}:{problem}:{iteration}")
    mu = math.log(params.median_tokens)
    return max(1, int(rng.lognormvariate(mu, params.sigma)))


_RESERVED = {"answer", "summary", "error", "report", "boxed", "na", "n", "a"}
CORPUS_WORDS = 400_000


@functools.cache
def _corpus(size: int = 2000) -> tuple[str, list[int]]:
    """A long text of synthetic words (about 3.5 letters) drawn with Zipf weights, and where each word starts.

    Text made of them compresses like model output (zlib about 2.6x; real reasoning text is about 2.8-3.1x),
    so storage figures are not flattered by filler. Replies are slices of it: cheap to cut, so making a reply
    takes no time the simulation does not account for. Built once, when the server starts (not on import:
    the benchmark's client process never needs it).
    """
    rng = random.Random("vocabulary")
    words: list[str] = []
    while len(words) < size:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(max(1, round(rng.gauss(3.5, 1.5)))))
        if word not in _RESERVED:
            words.append(word)
    drawn = rng.choices(
        words, cum_weights=list(itertools.accumulate(1.0 / (rank + 1) for rank in range(size))), k=CORPUS_WORDS
    )
    starts = list(itertools.accumulate((len(word) + 1 for word in drawn), initial=0))
    return " ".join(drawn), starts


def prose(words: int, seed: str) -> str:
    """Deterministic text of `words` words (about one token each)."""
    corpus, starts = _corpus()
    parts = []
    while words > 0:
        take = min(words, CORPUS_WORDS // 2)
        first = random.Random(f"{seed}:{words}").randrange(CORPUS_WORDS - take + 1)
        parts.append(corpus[starts[first] : starts[first + take] - 1])
        words -= take
    return " ".join(parts)


def reply_text(problem: int, iteration: int, tokens: int, params: SimParams) -> str:
    answer = (problem * 7 + iteration // max(1, params.change_every) * 13) % 1000
    previous = (problem * 7 + (iteration - 1) // max(1, params.change_every) * 13) % 1000
    report = (
        "N/A"
        if iteration == 0 or previous == answer
        else (
            f"The Answer cannot be {previous}, because step {iteration} double counts a case. "
            f"{prose(params.report_words, f'report:{problem}:{iteration}')}. "
            "The correct approach is to count each case once."
        )
    )
    filler = prose(max(0, tokens - 40 - params.summary_words - params.report_words), f"trace:{problem}:{iteration}")
    summary = prose(params.summary_words, f"summary:{problem}:{iteration}")
    return (
        f"{filler}\n[Error Report]: {report}\n"
        f"[Summary]: ROLLOUT-{iteration}: {summary}; we count the cases and find {answer}.\n"
        f"[Answer]: Therefore, final answer is \\boxed{{{answer}}}."
    )


#: The served context the simulated server reports (gpt-oss-120b's in the original runs).
CONTEXT = 131072


def make_server(params: SimParams, port: int = 0) -> tuple[ThreadingHTTPServer, Scheduler]:
    _corpus()  # before the first request, so no reply waits for it
    scheduler = Scheduler(params)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stall

        def log_message(self, *_args: Any) -> None:
            pass

        def _send(self, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send({"object": "list", "data": [{"id": "sim", "object": "model", "max_model_len": CONTEXT}]})
            elif self.path == "/stats":
                with scheduler.cond:
                    done = [
                        {
                            "problem": s.problem,
                            "iteration": s.iteration,
                            "tokens": s.tokens,
                            "start": s.start_sim,
                            "end": s.end_sim,
                        }
                        for s in scheduler.finished
                    ]
                self._send({"requests": done, "now": scheduler.now()})
            else:
                self._send({"status": "ok"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
            if self.path.rstrip("/").endswith("/tokenize"):  # as vLLM's: the prompt's length (4 characters a token)
                count = max(1, len(prompt or str(body.get("prompt", ""))) // 4)
                self._send({"count": count, "max_model_len": CONTEXT, "tokens": list(range(count))})
                return
            found = _PROBLEM.search(prompt)
            problem = int(found.group(1)) if found else -1
            reference = prompt.split("## Reference Solution", 1)[1] if "## Reference Solution" in prompt else ""
            marker = _ROLLOUT.search(reference)
            iteration = int(marker.group(1)) + 1 if marker else 0
            tokens = draw_tokens(params, problem, iteration)
            seq = Sequence(problem, iteration, tokens, float(tokens))
            scheduler.submit(seq)
            content = reply_text(problem, iteration, tokens, params)
            prompt_tokens = max(1, len(prompt) // 4)
            self._send(
                {
                    "id": "sim",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": tokens,
                        "total_tokens": prompt_tokens + tokens,
                    },
                }
            )

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    httpd.request_queue_size = 1024
    return httpd, scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, value in SimParams().__dict__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    params = SimParams(**{k: getattr(args, k) for k in SimParams().__dict__})
    httpd, _ = make_server(params)
    with open(args.port_file, "w") as handle:
        handle.write(str(httpd.server_address[1]))
    httpd.serve_forever()


if __name__ == "__main__":
    main()
