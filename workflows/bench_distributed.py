"""A LocalCluster of 2 single-threaded workers against the threaded scheduler (see
:mod:`bench.distributed`)::

    python workflows/bench_distributed.py --cubes 200 --threads 2

makes its own frames store (the article's frame shape, 100 rows) under /dev/shm unless
``--frames-store`` names one.
"""

from bench.distributed import main

if __name__ == "__main__":  # LocalCluster workers are spawned: they re-import this module
    main()
