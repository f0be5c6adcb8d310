"""Adapters that hand cubes to training frameworks; each is an optional extra."""
