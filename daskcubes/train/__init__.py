"""Training: the cube-store reader, stream mode, training batches and their buffers, and
the device. Beside :mod:`daskcubes.runtime`; neither imports the other."""
