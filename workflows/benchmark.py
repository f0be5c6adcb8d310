"""The article's ladder and daskcubes, measured side by side in one run on this machine.

    python workflows/benchmark.py            # the article's shapes (a few minutes)
    python workflows/benchmark.py --quick    # about a minute

Prints one table (method, rate, ratio to the article's step 3, ratio to the row's
ceiling) and the targets, and writes ``benchmark.json``, ``ladder.png`` and
``threads.png`` into ``--out``. Big data lives under ``--scratch`` (tmpfs when present)
and is deleted at the end. The measurements live in the package ``workflows/bench``.
"""

import sys

from bench.cli import main

if __name__ == "__main__":  # spawned processes re-import this module
    sys.exit(main())
