"""knowledge-flow: Knowledge Flow as a LangGraph agent.

>>> from knowledge_flow import graph
>>> graph.invoke({"problem": "...", "iterations": 3}, {"configurable": {"thread_id": "t1"}})

The names below are loaded on first use (the command line starts without importing LangGraph).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knowledge_flow.context import Context
    from knowledge_flow.graph import builder, compile_graph, graph
    from knowledge_flow.persistence.checkpointer import get_checkpointer
    from knowledge_flow.state import InputState, State

_EXPORTS = {
    "Context": "knowledge_flow.context",
    "InputState": "knowledge_flow.state",
    "State": "knowledge_flow.state",
    "builder": "knowledge_flow.graph",
    "compile_graph": "knowledge_flow.graph",
    "graph": "knowledge_flow.graph",
    "get_checkpointer": "knowledge_flow.persistence.checkpointer",
}


class _Package(types.ModuleType):
    """The package: `knowledge_flow.graph` is the compiled graph, also once the submodule of the same name
    is imported (the import system then stores the submodule under that attribute)."""

    def __getattribute__(self, name: str) -> Any:
        if name in _EXPORTS:
            return getattr(importlib.import_module(_EXPORTS[name]), name)
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _Package


__all__ = ["Context", "InputState", "State", "builder", "compile_graph", "get_checkpointer", "graph"]
