"""`python -m moa.cli`: how `moa up` starts the worker pools."""

from moa.cli import main

main()
