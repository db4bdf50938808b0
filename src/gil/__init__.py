"""gil: gene-incremental learning for single-cell transcriptomics.

Importing the package is cheap and imports neither MLflow nor Ray; those live in
:mod:`gil.tracking` and :mod:`gil.sweep`.
"""

__version__ = "0.1.0"
