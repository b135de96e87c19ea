"""A Flax GPT on a device mesh with `root(sharding="auto")` (`python -m examples.pjit.main`)."""
