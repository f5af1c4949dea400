"""One training run, what `wb train` does: the loop, checkpoints, trackers, stopping, ranks. No MLflow, no Optuna."""
