"""The cut: a job built once from plain values, its source laid out within a budget, and
the one cutter that sampling, stream mode, verify, the device and the benchmark call."""
