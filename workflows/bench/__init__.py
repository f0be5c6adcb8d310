"""The benchmark of ``python workflows/benchmark.py``, one module per concern.

- :mod:`bench.rows`: the key of every row (:class:`~bench.rows.Key`), its group, units,
  and the :class:`~bench.rows.Row` type; targets and other workflows use these keys.
- :mod:`bench.data`: what a run works on (:class:`~bench.data.Setup`) and its data.
- :mod:`bench.anchors`: the article's ladder, run as its authors ran it, and a plain
  dask.array attempt.
- :mod:`bench.daskcubes_rows`: daskcubes ingest, generation, end to end, write paths.
- :mod:`bench.ceilings`: what the machine allows (writing, copying).
- :mod:`bench.probes`: planning time and peak memory, each in a fresh process.
- :mod:`bench.distributed`, :mod:`bench.reading`: the cluster and the training side
  (also runnable alone: ``workflows/bench_distributed.py``, ``workflows/bench_reading.py``).
- :mod:`bench.targets`: the targets, by row key; a missing row is an error.
- :mod:`bench.report`: the table and the charts.
- :mod:`bench.cli`: the command line and the order of the measurements.
"""
