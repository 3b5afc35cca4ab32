"""Datasets from Feast, models, losses, metrics, evaluation, MLflow logging and the promotion gate."""
