"""knowledge-flow: Knowledge Flow as a LangGraph agent.

>>> from knowledge_flow import graph
>>> graph.invoke({"problem": "...", "iterations": 3}, {"configurable": {"thread_id": "t1"}})
"""

from knowledge_flow.context import Context
from knowledge_flow.graph import builder, compile_graph, graph
from knowledge_flow.state import InputState, State

__all__ = ["Context", "InputState", "State", "builder", "compile_graph", "graph"]
