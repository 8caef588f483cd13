"""`python -m rollback`: the same as the `rollback` console script."""

from rollback.cli import main

main()
