"""The rollout store's tables (SQLAlchemy 2): runs and rollouts with their full texts, next to the checkpoints.

Tables (in the same database as the LangGraph checkpoints: an SQLite file or a PostgreSQL database):

- ``kf_meta``: key/value, holds ``schema_version``.
- ``kf_runs``: one row per run (a thread can hold several runs, one after another).
- ``kf_rollouts``: one row per rollout: the full prompt, the full output and reasoning text, parsed fields,
  token usage, latency and finish reason. Long texts are stored compressed (read them through the store).
  Its id is ``{run_id}:{iteration}:{index}``, so a rollout whose
  response was received is found again after a crash and never requested twice. With log-probabilities it
  also holds DeepConf's trace measures (``conf_*``), its per-token confidences (packed float32,
  compressed) and, for a trace kept out of votes, why (``stop_reason``); a streamed trace holds its place in
  the order traces finished (``finish_order``) and where its token count comes from (``usage_source``).
- ``kf_calls``: LLM calls outside the rollouts (TRT's planning, reflection and verifier calls), with their
  prompt, output and what was made of it; id ``{run_id}:{iteration}:{kind}``, so a stored call is never
  requested twice either.
- ``kf_selections``: how each iteration's answer was chosen among its candidates: the rule as applied (``vote
  (tie: confidence)``, ``vote (no verdict)`` ...), the rollout chosen (an earlier iteration's when TRT kept its
  previous best), the votes and the agreement; id ``{run_id}:{iteration}``. Added without a new schema version:
  a file that lacks the table gets it when it is opened, and iterations without a row read their rank-0 rollout.
- ``kf_evals``, ``kf_eval_items``: evaluation runs, in `knowledge_flow.evaluation.rows`; ``kf_leases``: one
  process per run, and the workers of an evaluation, in `knowledge_flow.persistence.leases`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from knowledge_flow.persistence.compression import CompressedText

SCHEMA_VERSION = 9
"""1: runs and rollouts. 2: evaluation tables; rollouts gain temperature, confidence, rank (thinkers) and
endpoint (replicas). 3: long texts (prompt, output, reasoning, summary) and checkpoints are stored compressed,
and the graph's append-only lists are delta channels (each item written once); rows and checkpoints written
before stay readable. 4: prompt sets (``kf_prompt_sets``); rollouts gain the request path, prefill, budgets
(requested and sent), counted prompt tokens and what was parsed; runs gain what the endpoint served. 5: calls
outside the rollouts (``kf_calls``: TRT planning, reflection, verifier); rollouts gain the TRT strategy they
followed, DeepConf measures (tokens, mean, lowest, bottom10, tail, window), the online threshold in force,
the stop reason of a trace kept out of votes, the per-token confidences and the requests sent again
(``retries``); runs gain DeepConf's threshold. 6: rollouts gain the order in which streamed traces finished
(``finish_order``) and where a streamed trace's token count comes from (``usage_source``); per-token
confidences are written as float32 (float16 rows stay readable). 7: rows of runs, rollouts, calls,
evaluations and their problems carry a seal (`knowledge_flow.persistence.seals`); rollouts record how many
rollouts their iteration has. 8: workers: rollouts gain the worker that ran them, evaluation problems the
worker that claims them (``claimed_by``) and the one that ran them last (``worker``), leases their holder's
heartbeat timeout; the same schema on PostgreSQL. 9: rollouts gain the rollouts they aggregated
(``parents_json``, rsa). Columns added after seals existed are sealed when set, so the seals of older rows
still hold."""


class SchemaError(RuntimeError):
    """The database was written by a newer version of knowledge-flow."""


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "kf_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RunRow(Base):
    __tablename__ = "kf_runs"
    #: Mirrors of the run's checkpoint (`knowledge_flow.runs.MIRRORED`): the checkpoint is their source.
    __table_args__ = {"info": {"unsealed": ("status", "iterations_done", "final_answer")}}  # noqa: RUF012
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(256), index=True)
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    problem: Mapped[str] = mapped_column(Text)
    params_json: Mapped[str] = mapped_column(Text)
    base_url: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(256))
    strategy: Mapped[str] = mapped_column(String(64))
    prompt_version: Mapped[str] = mapped_column(String(64))
    package_version: Mapped[str] = mapped_column(String(64))
    iterations_done: Mapped[int] = mapped_column(Integer, default=0)
    final_answer: Mapped[str | None] = mapped_column(Text)
    served_json: Mapped[str | None] = mapped_column(Text)
    """What the endpoint served: model name, context length, server kind, how tokens were counted."""
    confidence_threshold: Mapped[float | None] = mapped_column(Float)
    """deepconf: the online threshold the warm-up wave set."""
    seal: Mapped[str | None] = mapped_column(String(32))

    @property
    def params(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.params_json)
        return value

    @property
    def served(self) -> dict[str, Any] | None:
        return json.loads(self.served_json) if self.served_json else None

    @property
    def answered_by(self) -> str:
        """The model that answered: the name the endpoint reported (`served`), with the name the run sent when
        they differ (llama.cpp's server answers to any name); the name sent when no rollout reached a server."""
        served = (self.served or {}).get("model")
        if not served or served == self.model:
            return self.model
        return f"{served} (requested as {self.model})"


class PromptSetRow(Base):
    """The text of each prompt set a run used, by its SHA-256 (a resumed run renders exactly the same)."""

    __tablename__ = "kf_prompt_sets"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(CompressedText)
    origin: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(40))


class RolloutRow(Base):
    __tablename__ = "kf_rollouts"
    #: A column added after seals existed is sealed when it holds a value (`seals.sealed_columns`).
    __table_args__ = {"info": {"added": ("worker", "parents_json")}}  # noqa: RUF012
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("kf_runs.run_id"), index=True)
    thread_id: Mapped[str] = mapped_column(String(256), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[str] = mapped_column(String(40))
    prompt_json: Mapped[str] = mapped_column(CompressedText)
    content: Mapped[str] = mapped_column(CompressedText)
    reasoning: Mapped[str | None] = mapped_column(CompressedText)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    answer: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(CompressedText)
    error_report: Mapped[str | None] = mapped_column(Text)
    parsed: Mapped[bool] = mapped_column(Boolean, default=False)
    changed: Mapped[bool | None] = mapped_column(Boolean)
    knowledge_added: Mapped[str | None] = mapped_column(Text)
    temperature: Mapped[float | None] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    endpoint: Mapped[str | None] = mapped_column(Text)
    """The base URL (replica) that produced it."""
    error: Mapped[str | None] = mapped_column(Text)
    """Why the rollout failed (no usable response after retries); None when it succeeded."""
    rank: Mapped[int | None] = mapped_column(Integer)
    """Among the thinkers kept in its iteration (0 = the best, whose answer counts); None when not kept."""
    request_path: Mapped[str | None] = mapped_column(String(16))
    """chat, chat-continue (a prefill continued as the assistant's message) or completion (token ids)."""
    prefill: Mapped[str | None] = mapped_column(CompressedText)
    max_tokens_requested: Mapped[int | None] = mapped_column(Integer)
    max_tokens_sent: Mapped[int | None] = mapped_column(Integer)
    """The budget sent: the requested one fitted to the served context."""
    prompt_tokens_counted: Mapped[int | None] = mapped_column(Integer)
    """The prompt's length as counted before sending (the server's own count is `prompt_tokens`)."""
    parsed_from: Mapped[str | None] = mapped_column(String(16))
    """content, or reasoning when the final text was empty (a thinking block never closed)."""
    retries: Mapped[int | None] = mapped_column(Integer)
    """Requests sent again for its iteration: after an unusable response, or to another replica after one
    failed (the OpenAI client's own retries of a request are not counted)."""
    strategy_json: Mapped[str | None] = mapped_column(Text)
    """trt: the approach the thinker followed (key_technique, what_to_try)."""
    conf_tokens: Mapped[int | None] = mapped_column(Integer)
    """DeepConf: positions with top log-probabilities (the measures below are over them)."""
    conf_mean: Mapped[float | None] = mapped_column(Float)
    conf_lowest: Mapped[float | None] = mapped_column(Float)
    conf_bottom10: Mapped[float | None] = mapped_column(Float)
    conf_tail: Mapped[float | None] = mapped_column(Float)
    conf_window: Mapped[int | None] = mapped_column(Integer)
    conf_threshold: Mapped[float | None] = mapped_column(Float)
    """deepconf: the online threshold in force when the trace was sampled (None during the warm-up)."""
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    """Why the trace is kept out of votes: gconf_threshold (stopped by the client mid-stream),
    below_threshold (finished, its lowest group confidence under the threshold) or consensus_cancelled
    (finished or closed after the stop policy's consensus was reached)."""
    finish_order: Mapped[int | None] = mapped_column(Integer)
    """Streamed traces: the 0-based place in the order the run's traces finished (the paper's accounting
    one trace at a time can be recomputed from it)."""
    usage_source: Mapped[str | None] = mapped_column(String(24))
    """Streamed traces: where `completion_tokens` comes from: server (the final usage), server-at-close
    (the server's count in the last chunk read before the client closed the stream), received (the tokens
    received) or chunks-estimate (the chunks received: an estimate)."""
    token_confidence: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    """Per-token confidences, packed (`compression.pack_confidences`); read with `RolloutStore.token_confidences`."""
    worker: Mapped[str | None] = mapped_column(Text)
    """The process that ran it (``HOST:PID``)."""
    iteration_rollouts: Mapped[int | None] = mapped_column(Integer)
    """How many rollouts (thinkers) its iteration has."""
    seal: Mapped[str | None] = mapped_column(String(32))
    parents_json: Mapped[str | None] = mapped_column(Text)
    """rsa: the ids of the previous loop's rollouts this one aggregated, in the order its prompt showed them
    (a JSON list; None for an independent rollout)."""

    @property
    def parents(self) -> list[str] | None:
        value: list[str] | None = json.loads(self.parents_json) if self.parents_json else None
        return value

    @property
    def strategy(self) -> dict[str, str] | None:
        return json.loads(self.strategy_json) if self.strategy_json else None

    @property
    def measures(self) -> dict[str, float] | None:
        """DeepConf measures (with `tokens`), or None when the rollout had no top log-probabilities."""
        if self.conf_lowest is None:
            return None
        return {
            "tokens": float(self.conf_tokens or 0),
            "mean": float(self.conf_mean or 0.0),
            "lowest": float(self.conf_lowest),
            "bottom10": float(self.conf_bottom10 or 0.0),
            "tail": float(self.conf_tail or 0.0),
        }

    @property
    def messages(self) -> list[dict[str, str]]:
        value: list[dict[str, str]] = json.loads(self.prompt_json)
        return value

    def text_to_parse(self) -> str:
        """The output as the answer is read from it: a prefill continued as the assistant's message comes
        first (rows written before the request path was recorded kept that prefill in the messages)."""
        if self.request_path == "chat-continue":
            return (self.prefill or "") + self.content
        messages = self.messages
        if self.request_path is None and messages and messages[-1]["role"] == "assistant":
            return messages[-1]["content"] + self.content
        return self.content


class CallRow(Base):
    """An LLM call outside the rollouts (TRT: ``plan``, ``reflect``, ``verify``)."""

    __tablename__ = "kf_calls"
    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    """``{run_id}:{iteration}:{kind}``."""
    run_id: Mapped[str] = mapped_column(ForeignKey("kf_runs.run_id"), index=True)
    thread_id: Mapped[str] = mapped_column(String(256), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    """plan and reflect: the iteration they prepare; verify: the iteration whose candidates it ranks."""
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[str] = mapped_column(String(40))
    prompt_json: Mapped[str] = mapped_column(CompressedText)
    prefill: Mapped[str | None] = mapped_column(CompressedText)
    request_path: Mapped[str | None] = mapped_column(String(16))
    max_tokens_sent: Mapped[int | None] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(CompressedText)
    reasoning: Mapped[str | None] = mapped_column(CompressedText)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    temperature: Mapped[float | None] = mapped_column(Float)
    endpoint: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    """Why the call failed (no usable response after retries)."""
    outcome_json: Mapped[str | None] = mapped_column(Text)
    """What the call changed, as applied (small JSON)."""
    seal: Mapped[str | None] = mapped_column(String(32))

    @property
    def messages(self) -> list[dict[str, str]]:
        value: list[dict[str, str]] = json.loads(self.prompt_json)
        return value

    @property
    def outcome(self) -> dict[str, Any] | None:
        return json.loads(self.outcome_json) if self.outcome_json else None


class SelectionRow(Base):
    """How one iteration's answer was chosen among its candidates."""

    __tablename__ = "kf_selections"
    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    """``{run_id}:{iteration}``."""
    run_id: Mapped[str] = mapped_column(ForeignKey("kf_runs.run_id"), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(String(96))
    """The select rule as applied (`knowledge_flow.records.Selection.rule`)."""
    rollout_id: Mapped[str | None] = mapped_column(String(128))
    """The chosen rollout: one of the iteration's, or an earlier one's kept as the previous best."""
    answer: Mapped[str | None] = mapped_column(Text)
    kept_previous: Mapped[bool] = mapped_column(Boolean, default=False)
    votes_json: Mapped[str] = mapped_column(Text, default="{}")
    agreement: Mapped[float] = mapped_column(Float, default=0.0)

    @property
    def votes(self) -> dict[str, float]:
        value: dict[str, float] = json.loads(self.votes_json)
        return value
