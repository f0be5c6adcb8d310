"""The entry point: ``python -m daskcubes.workflow`` runs :mod:`daskcubes.cli`."""

from daskcubes.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
