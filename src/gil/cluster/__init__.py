"""The Ray compute backend of training and evaluation (``compute.backend: ray``).

:mod:`gil.cluster.session` starts or joins Ray (shared with sweeps); :mod:`gil.cluster.runner`
runs each (strategy, seed) job as a Ray task. With :mod:`gil.sweep` these are the only modules that
import Ray; nothing is imported here, so that importing the package stays light.
"""
