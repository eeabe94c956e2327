"""Graph nodes: thin functions of (state, runtime) that ask the strategy."""

from knowledge_flow.nodes.distill import distill_knowledge
from knowledge_flow.nodes.extract import extract_answer
from knowledge_flow.nodes.prepare import prepare
from knowledge_flow.nodes.reflect import manage, reflect, route_after_extract, route_after_prepare, verify
from knowledge_flow.nodes.solve import solve
from knowledge_flow.nodes.stop_check import route_after_stop_check, stop_check

__all__ = [
    "distill_knowledge",
    "extract_answer",
    "manage",
    "prepare",
    "reflect",
    "route_after_extract",
    "route_after_prepare",
    "route_after_stop_check",
    "solve",
    "stop_check",
    "verify",
]
