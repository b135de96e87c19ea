"""Multi-host training and orbax checkpoints with ROOT (`python -m examples.multihost.main`)."""
