"""Hyperparameter sweeps (with :mod:`gil.cluster`, the only packages that import Ray).

:mod:`gil.sweep.space` validates the ``sweep:`` section of ``params.yaml`` (search spaces, objective)
without importing Ray; :mod:`gil.sweep.runner` runs the sweep with Ray Tune, Optuna and ASHA
(``run_sweep``, and ``sweep_command`` for the CLI). Nothing is imported here, so that
``import gil.sweep.space`` stays light.
"""
