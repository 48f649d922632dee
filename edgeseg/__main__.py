"""`python -m edgeseg ...` is the same as the `edgeseg` command."""

from edgeseg.cli import main

main()
