"""Tiny ViT on scikit-learn digits: ROOT vs Muon (`python -m examples.vision.main`)."""
