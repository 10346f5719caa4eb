"""Run the CLI as python -m nextbest."""

from nextbest.cli.main import main

main()
