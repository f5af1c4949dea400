"""Every MLflow call and the Optuna vocabulary: store URLs, the run layout, the tracker. No torch."""
