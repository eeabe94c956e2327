"""Describe what an installed vLLM accepts: its version, server options, environment variables, attention
backends and reasoning parsers, as one JSON object on stdout.

A standalone script (nothing from knowledge_flow): run it with the interpreter that has vLLM::

    python vllm_check.py

It builds the OpenAI server's argument parser without starting anything (about 10 s, mostly importing torch).
Written against vLLM 0.10.2 and 0.32.0; each item is looked up in the places those releases keep it, and an
item it cannot find is reported as ``null`` rather than guessed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import json
import os
import sys
from typing import Any

# Run by path, this file's folder comes first on sys.path, and its sibling `vllm.py` would shadow the real vllm
# package: drop the folder.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

FORMAT = 1

PARSER_FACTORIES = (  # (module of make_arg_parser, module of FlexibleArgumentParser)
    ("vllm.entrypoints.launchers.cli_args", "vllm.utils.argparse_utils"),  # 0.32
    ("vllm.entrypoints.openai.cli_args", "vllm.utils.argparse_utils"),
    ("vllm.entrypoints.openai.cli_args", "vllm.utils"),  # 0.10.2
)
BACKEND_ENUMS = (
    ("vllm.v1.attention.backends.registry", "AttentionBackendEnum"),  # 0.32
    ("vllm.attention.backends.registry", "AttentionBackendEnum"),
    ("vllm.attention.backends.registry", "_Backend"),
    ("vllm.platforms.interface", "_Backend"),  # 0.10.2
)


def vllm_version() -> str:
    version = getattr(importlib.import_module("vllm"), "__version__", None)
    return str(version) if version else "unknown"


def server_options() -> dict[str, list[str] | None] | None:
    """Every option string of the OpenAI server's parser, with its choices (null when free-form)."""
    for parser_module, flexible_module in PARSER_FACTORIES:
        try:
            make_arg_parser = importlib.import_module(parser_module).make_arg_parser
            flexible = importlib.import_module(flexible_module).FlexibleArgumentParser
        except (ImportError, AttributeError):
            continue
        parser = make_arg_parser(flexible())
        options: dict[str, list[str] | None] = {}
        for action in parser._actions:
            choices = [str(c) for c in action.choices] if action.choices is not None else None
            for option in action.option_strings:
                options[option] = choices
        return options
    return None


def environment_names() -> list[str] | None:
    try:
        envs = importlib.import_module("vllm.envs")
    except ImportError:
        return None
    names = getattr(envs, "environment_variables", None)
    return sorted(names) if isinstance(names, dict) else None


def attention_backends() -> list[str] | None:
    for module, name in BACKEND_ENUMS:
        try:
            enum = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        return sorted(member.name for member in enum)
    return None


def reasoning_parsers() -> list[str] | None:
    try:
        manager = importlib.import_module("vllm.reasoning").ReasoningParserManager
    except (ImportError, AttributeError):
        return None
    names = set(getattr(manager, "reasoning_parsers", {}) or {})
    names |= set(getattr(manager, "lazy_parsers", {}) or {})
    return sorted(names) or None


def describe() -> dict[str, Any]:
    with contextlib.redirect_stdout(io.StringIO()):  # vLLM prints notices on import
        return {
            "format": FORMAT,
            "version": vllm_version(),
            "python": sys.executable,
            "options": server_options(),
            "env": environment_names(),
            "attention_backends": attention_backends(),
            "reasoning_parsers": reasoning_parsers(),
        }


def main() -> int:
    try:
        report = describe()
    except Exception as exc:  # an import that fails is the answer: report it in one line
        print(json.dumps({"format": FORMAT, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
