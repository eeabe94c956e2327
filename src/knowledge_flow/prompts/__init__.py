"""Prompts as data: prompt sets (TOML + Jinja2), the built-in sets, and how they are loaded and checked.

See `knowledge_flow.prompts.sets` for the file format and `knowledge_flow.prompts.environment` for how
templates are rendered.
"""

from knowledge_flow.prompts.sets import (
    DEFAULT_SETS,
    PromptSet,
    PromptSetError,
    PromptSpec,
    PromptTable,
    builtin_names,
    digest_of,
    from_source,
    load_prompt_set,
)

__all__ = [
    "DEFAULT_SETS",
    "PromptSet",
    "PromptSetError",
    "PromptSpec",
    "PromptTable",
    "builtin_names",
    "digest_of",
    "from_source",
    "load_prompt_set",
]
