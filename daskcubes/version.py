"""The package's version: a leaf module, so that what records it (a store's provenance)
needs nothing above it."""

__version__ = "0.1.0"
