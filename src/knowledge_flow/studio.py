"""The graph for LangGraph Studio / ``langgraph dev``: compiled without a checkpointer of its own."""

from knowledge_flow.graph import compile_graph

graph = compile_graph()
