"""root_optax's implementation: private, import from `root_optax`."""
