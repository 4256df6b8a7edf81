"""The networks, the training loop, the optimizer comparison and the Optuna search (with its storage and the
retraining of its best configuration)."""
