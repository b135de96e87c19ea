"""Experiment configs (ml_collections), one per experiment; see each docstring."""
