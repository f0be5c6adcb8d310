"""Storage: local paths and fsspec URLs with retries, frame sources and files, the
stores' layout and schema with their attribute keys, shards, the completion record, the
lease, and reading window maps."""
