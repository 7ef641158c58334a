"""`python -m agent.cli`: the same as the `kernelwright` command."""
from agent.cli import main

main()
