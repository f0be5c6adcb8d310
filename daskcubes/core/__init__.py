"""The pure core: the definition, the plan, counter-based draws, window tables, grid
windows and the kernels. numpy and the errors only: integers and arrays in, recipes and
cubes out; no dask, no I/O (maps come in as tables)."""
