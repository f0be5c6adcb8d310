"""The training side, reading and streaming cubes (see :mod:`bench.reading`)::

    python workflows/bench_reading.py [--cubes 256] [--threads 2] [--dtype float64]

Without ``--frames-store`` it makes 100 synthetic 1000x1000 frames under ``--scratch``
first, and deletes the scratch directory at the end.
"""

from bench.reading import main

if __name__ == "__main__":  # torch's DataLoader workers may re-import this module
    main()
