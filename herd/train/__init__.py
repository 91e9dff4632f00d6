"""Pretraining: config tree, schedule, trainer loop with recovery, checkpoints and metrics."""
