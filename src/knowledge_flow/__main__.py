from knowledge_flow.cli import main

main()
