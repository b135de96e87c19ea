"""What the examples share: data, models, optimizers, gradient noise, statistics, runtime."""
