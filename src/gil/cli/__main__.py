"""``python -m gil.cli``: the ``gil`` console entry point."""

from gil.cli import main

main()
