"""``gil validate`` exits non-zero exactly when ``gil prepare`` would refuse the file, after the summary.

Why: a CI step or script that validates before ``dvc repro`` must fail on a file that ``gil prepare``
then refuses, and pass the files it accepts under the params in force.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from test_data_io import BAD_FILES, _bad_file, _counts

REFUSED_WITH_DEFAULTS = ["log", "non_integer", "duplicates"]


def _summary_then_one_error(result, keywords: list[str]) -> None:  # noqa: ANN001 - CliResult
    """The whole summary on stdout (its first and last sections), one ``error:`` line on stderr."""
    assert result.code == 2
    assert " cells x 60 genes" in result.stdout.splitlines()[0]
    assert "candidate label columns:" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gil prepare would refuse this file"), result.stderr
    assert "Traceback" not in result.stderr
    for keyword in keywords:
        assert keyword in lines[0], (keyword, lines[0])


@pytest.mark.parametrize("name", REFUSED_WITH_DEFAULTS)
def test_validate_fails_on_what_prepare_refuses(
    name: str, tmp_path: Path, run_cli: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the default dataset settings apply
    result = run_cli("validate", _bad_file(name, tmp_path))
    _summary_then_one_error(result, ["default dataset settings", *BAD_FILES[name][1]])


def test_validate_passes_what_prepare_accepts_with_the_params(
    synthetic_h5ad: Path, tiny_params: dict, write_params: Callable, run_cli: Callable
) -> None:
    params = write_params(tiny_params)
    result = run_cli("validate", synthetic_h5ad, "--params", params)
    assert result.code == 0, result.stderr
    assert result.stdout.strip().endswith(f"ok: gil prepare accepts this file with the settings in {params}")
    assert run_cli("prepare", "--params", params, "--out", params.parent / "processed").code == 0


def test_validate_follows_the_params_counts_layer_and_qc(
    tmp_path: Path, tiny_params: dict, write_params: Callable, run_cli: Callable
) -> None:
    """Log-transformed X is refused until ``dataset.counts_layer`` names the counts; QC thresholds
    that leave no cell are refused too: the verdict is the one ``gil prepare`` gives."""
    adata = _counts()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    path = tmp_path / "logged.h5ad"
    adata.write_h5ad(path)
    tiny_params["dataset"].update(path=str(path), label_columns=[])

    refused = run_cli("validate", path, "--params", write_params(tiny_params))
    _summary_then_one_error(refused, ["looks log-transformed", "set dataset.counts_layer"])
    assert "layer 'counts': integer counts" in refused.stdout

    tiny_params["dataset"]["counts_layer"] = "counts"
    assert run_cli("validate", path, "--params", write_params(tiny_params)).code == 0

    tiny_params["prepare"]["min_genes_per_cell"] = 61  # more than the file's 60 genes
    too_strict = run_cli("validate", path, "--params", write_params(tiny_params))
    _summary_then_one_error(too_strict, ["no cell has 61 expressed genes"])
