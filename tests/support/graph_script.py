"""Run the graph in a process of its own, with any input fields (for options the CLI does not have):
``python -m tests.support.graph_script --base-url U --db D --thread T --inputs JSON``. Prints the result as
JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from knowledge_flow import Context, compile_graph
from knowledge_flow.persistence import SqliteCheckpointer


def main() -> None:  # pragma: no cover - run as a subprocess
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--thread", required=True)
    parser.add_argument("--inputs", required=True)
    args = parser.parse_args()
    checkpointer = SqliteCheckpointer(args.db)
    try:
        config: Any = {"configurable": {"thread_id": args.thread}}
        result = compile_graph(checkpointer).invoke(
            json.loads(args.inputs), config, context=Context(base_url=args.base_url, db_path=args.db)
        )
    finally:
        checkpointer.close()
    print(json.dumps(result))


if __name__ == "__main__":  # pragma: no cover
    main()
