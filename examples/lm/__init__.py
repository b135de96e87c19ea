"""Byte-level LM on the Python standard library: ROOT vs Muon vs AdamW (`python -m examples.lm.main`)."""
