"""Runs: executors built by name, the stages and their tasks, worker checks, verify and
the dashboard page. Beside :mod:`daskcubes.train`; neither imports the other."""
