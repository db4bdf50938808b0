"""Experiment tracking. :mod:`gil.tracking.base` defines the interface the core calls (no MLflow
import); :mod:`gil.tracking.mlflow_tracker` is the only module that imports MLflow."""
