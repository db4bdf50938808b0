"""``gil prepare``: quality control and log1p transform of raw counts into the processed layout.

The counts come from an ``.h5ad`` or a SOMA experiment (:func:`gil.data.source.open_source`); both
give the same row chunks, so the processed arrays do not depend on the source. ``prepare.json``
records the source (:meth:`~gil.data.source.MatrixSource.identity`) and a content hash of what was
read (:class:`gil.data.io.ContentHash`, the matrix and the gene and cell names).

Why streaming: single-cell files can hold millions of cells. The input is read in row chunks twice
and the output arrays are written chunk by chunk into memory-mapped ``.npy`` files inside the
temporary output directory, so memory holds one chunk plus per-cell and per-gene vectors, never the
matrix. The directory is swapped into place only when complete (:func:`gil.files.atomic_dir`).

QC order (as ``scanpy.pp.filter_cells(min_genes)`` followed by ``scanpy.pp.filter_genes(min_cells)``):

1. cells with fewer than ``min_genes_per_cell`` expressed genes (counted over all genes) are removed;
2. genes expressed in fewer than ``min_cells_per_gene`` of the remaining cells are removed.

Cells are not re-checked after gene removal (scanpy does not either). Both counts are known after one
pass because each chunk holds whole rows: a cell's fate is decided before its genes are counted.

``genes.tsv`` ``n_cells`` and ``total`` (raw counts) are over the kept cells; ``cells.tsv`` ``n_genes``
is the cell's number of stored values after gene filtering.

Transform: optional library-size normalisation of each cell to ``normalize_total`` (library size =
the cell's total over the kept genes, as scanpy after filtering), then ``log1p``; float32.

Values (``prepare.values``): ``log1p`` stores those values; ``binned`` stores scGPT's per-cell bins
instead (:func:`bin_rows`), the representation scGPT checkpoints were pretrained on; ``auto`` is
``binned`` with the checkpoint's ``n_bins`` when ``model.init`` is an scGPT model trained on bins,
else ``log1p``. Whatever is stored is what every later step uses: training inputs and targets, the
masked-value loss, every metric and the gene-mean reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from gil.config import Config, DatasetConfig, PrepareConfig
from gil.data.io import ContentHash, ValueStats, gene_names, label_table
from gil.data.source import MatrixSource, open_source
from gil.errors import GilError
from gil.files import atomic_dir, dumps_json
from gil.scgpt_dir import binned_values

RESERVED_CELL_COLUMNS = ("cell", "n_genes")


@dataclass
class QcCounts:
    """What the first pass learns: which cells and genes survive QC, and the value statistics."""

    cell_keep: np.ndarray
    gene_keep: np.ndarray
    gene_cells: np.ndarray
    gene_totals: np.ndarray
    stats: ValueStats
    content: ContentHash

    @property
    def nnz(self) -> int:
        """Stored values of the filtered matrix (each kept gene's count of kept expressing cells)."""
        return int(self.gene_cells[self.gene_keep].sum())


def count_pass(source: MatrixSource, options: PrepareConfig) -> QcCounts:
    """Pass 1: validate values, hash them and apply the QC thresholds (cells first, then genes on
    kept cells)."""
    stats = ValueStats(source.path, source.where, source.counts_fix)
    content = ContentHash()
    cell_keep = np.zeros(source.n_cells, dtype=bool)
    gene_cells = np.zeros(source.n_genes, dtype=np.int64)
    gene_totals = np.zeros(source.n_genes, dtype=np.float64)
    for first_row, chunk in source.chunks(options.chunk_size):
        stats.update(first_row, chunk)
        content.update(chunk)
        keep = np.diff(chunk.indptr) >= options.min_genes_per_cell
        cell_keep[first_row : first_row + chunk.shape[0]] = keep
        kept = chunk[keep]
        gene_cells += np.bincount(kept.indices, minlength=source.n_genes)
        gene_totals += np.bincount(kept.indices, weights=kept.data, minlength=source.n_genes)
    stats.require_counts()
    return QcCounts(
        cell_keep, gene_cells >= options.min_cells_per_gene, gene_cells, gene_totals, stats, content
    )


def transform(counts: sp.csr_matrix, normalize_total: float | None) -> np.ndarray:
    """Values of ``counts`` (canonical CSR) after optional normalisation and log1p, as float32."""
    data = counts.data.astype(np.float64)
    if normalize_total is not None:
        library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
        data *= np.repeat(normalize_total / np.where(library > 0, library, 1.0), np.diff(counts.indptr))
    return np.log1p(data).astype(np.float32)


def value_representation(config: Config) -> tuple[str, int | None]:
    """``("log1p", None)`` or ``("binned", n_bins)``: what ``prepare.values`` resolves to (see above)."""
    options, pretrained = config.prepare, config.model.init.pretrained
    if options.values == "log1p":
        return "log1p", None
    checkpoint_bins = binned_values(pretrained) if pretrained is not None else None
    n_bins = options.n_bins or checkpoint_bins
    if options.values == "auto" and checkpoint_bins is None:
        return "log1p", None
    if n_bins is None:
        raise GilError("prepare.values 'binned' needs prepare.n_bins (e.g. 51, scGPT's); add it")
    return "binned", n_bins


def bin_rows(indptr: np.ndarray, values: np.ndarray, n_bins: int) -> np.ndarray:
    """scGPT's per-cell value binning of the CSR values of each row, as float32 bins.

    As scGPT's ``binning`` (scgpt/preprocess.py): the edges are the ``n_bins - 1`` quantiles
    (``linspace(0, 1, n_bins - 1)``) of the cell's non-zero values, and a value's bin lies between
    ``digitize(right=True) + 1`` and ``digitize(right=False)``, so non-zero values get bins
    ``1..n_bins-1`` and zeros keep 0. Where values tie with edges that range has several bins;
    scGPT draws one at random, gil takes the middle one (``(left + right + 1) // 2``) so that the
    processed data, and DVC's hashes of it, are deterministic.
    """
    out = np.zeros(len(values), dtype=np.float32)
    quantiles = np.linspace(0, 1, n_bins - 1)
    for start, stop in zip(indptr[:-1], indptr[1:], strict=True):
        row = values[start:stop]
        positive = row > 0
        if not positive.any():
            continue
        edges = np.quantile(row[positive], quantiles)
        left = np.digitize(row[positive], edges)
        right = np.digitize(row[positive], edges, right=True)
        out[start:stop][positive] = (left + right + 1) // 2
    return out


class _NpyWriter:
    """Writes a 1-D ``.npy`` file of known length by appending chunks (the header first)."""

    def __init__(self, path: Path, dtype: type, length: int):
        self.path, self.dtype, self.length = path, np.dtype(dtype), length

    def __enter__(self) -> _NpyWriter:
        self.handle = open(self.path, "wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.length,),
        }
        np.lib.format.write_array_header_1_0(self.handle, header)
        return self

    def append(self, chunk: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(chunk, dtype=self.dtype).tobytes())

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def write_matrix_pass(
    source: MatrixSource, qc: QcCounts, options: PrepareConfig, directory: Path, n_bins: int | None = None
) -> np.ndarray:
    """Pass 2: write ``indptr/indices/values.npy`` of the filtered, transformed matrix into ``directory``.

    ``n_bins`` None stores the log1p values, else their per-cell bins. Returns the number of stored
    genes of each kept cell.
    """
    row_genes = []
    position = 0
    # Plain appends, not a memory map: mapped output pages would count as resident memory.
    with (
        _NpyWriter(directory / "indices.npy", np.int32, qc.nnz) as indices,
        _NpyWriter(directory / "values.npy", np.float32, qc.nnz) as values,
    ):
        for first_row, chunk in source.chunks(options.chunk_size):
            kept = chunk[qc.cell_keep[first_row : first_row + chunk.shape[0]]][:, qc.gene_keep]
            kept.sort_indices()
            indices.append(kept.indices)
            transformed = transform(kept, options.normalize_total)
            values.append(transformed if n_bins is None else bin_rows(kept.indptr, transformed, n_bins))
            row_genes.append(np.diff(kept.indptr))
            position += kept.nnz
    if position != qc.nnz:
        raise RuntimeError(f"pass 2 wrote {position} values, pass 1 counted {qc.nnz}: the input changed")
    n_genes = np.concatenate(row_genes).astype(np.int64)
    np.save(directory / "indptr.npy", np.concatenate([[0], np.cumsum(n_genes)]).astype(np.int64))
    return n_genes


def _check_label_columns(columns: list[str]) -> None:
    clash = [column for column in columns if column in RESERVED_CELL_COLUMNS]
    if clash:
        raise GilError(
            f"dataset.label_columns: {clash} clash with the cells.tsv columns {list(RESERVED_CELL_COLUMNS)}; "
            "rename that obs column"
        )


def _check_not_empty(qc: QcCounts, options: PrepareConfig) -> None:
    if not qc.cell_keep.any():
        raise GilError(
            f"no cell has {options.min_genes_per_cell} expressed genes; lower prepare.min_genes_per_cell"
        )
    if not qc.gene_keep.any():
        raise GilError(
            f"no gene is expressed in {options.min_cells_per_gene} of the kept cells; "
            "lower prepare.min_cells_per_gene"
        )


def _checked_source(
    source: MatrixSource, dataset: DatasetConfig, options: PrepareConfig
) -> tuple[np.ndarray, pd.DataFrame, QcCounts]:
    """Every check of the input that ``gil prepare`` makes before writing anything: the gene
    names, label columns, raw counts and QC leaving cells and genes; raises :class:`GilError`."""
    genes = gene_names(source, dataset.gene_column)
    labels = label_table(source, dataset.label_columns)
    qc = count_pass(source, options)
    _check_not_empty(qc, options)
    return genes, labels, qc


def refusal(dataset: DatasetConfig, options: PrepareConfig) -> str | None:
    """Why ``gil prepare`` would refuse ``dataset``'s source under these settings, or None if it
    would accept it: ``gil validate`` fails on it.

    The same checks as :func:`run_prepare`, so the two commands can never disagree.
    """
    try:
        _check_label_columns(dataset.label_columns)
        with open_source(dataset) as source:
            _checked_source(source, dataset, options)
    except GilError as error:
        return str(error)
    return None


def _summary(config: Config, source: MatrixSource, genes: np.ndarray, qc: QcCounts) -> dict:
    values, n_bins = value_representation(config)
    transform = "log1p" if config.prepare.normalize_total is None else "normalize_total, log1p"
    return {
        "input": str(source.path),
        "source": source.identity(),
        "content_sha256": qc.content.hexdigest(genes, source.obs.index),
        "matrix": source.where,
        "value_type": qc.stats.value_type,
        "cells_before": source.n_cells,
        "genes_before": source.n_genes,
        "cells_after": int(qc.cell_keep.sum()),
        "genes_after": int(qc.gene_keep.sum()),
        "nnz": qc.nnz,
        "qc": {
            "order": "cells (min_genes_per_cell, all genes), then genes (min_cells_per_gene, kept cells)",
            "min_genes_per_cell": config.prepare.min_genes_per_cell,
            "min_cells_per_gene": config.prepare.min_cells_per_gene,
        },
        "normalized": config.prepare.normalize_total is not None,
        "normalize_total": config.prepare.normalize_total,
        "transform": transform if values == "log1p" else f"{transform}, binned ({n_bins} bins)",
        "values": values,
        "n_bins": n_bins,
    }


def summary_line(summary: dict, out_dir: Path) -> str:
    """One line for the terminal: sizes before and after QC, the transform and the destination."""
    return (
        f"prepared {summary['cells_after']}/{summary['cells_before']} cells x "
        f"{summary['genes_after']}/{summary['genes_before']} genes ({summary['nnz']} values, "
        f"{summary['transform']} of {summary['matrix']}) -> {out_dir}"
    )


def run_prepare(config: Config, out_dir: Path) -> None:
    """QC-filter and transform ``config.dataset``'s source into ``out_dir`` (atomically); print a summary."""
    dataset, options = config.dataset, config.prepare
    _check_label_columns(dataset.label_columns)
    with open_source(dataset) as source:
        genes, labels, qc = _checked_source(source, dataset, options)
        summary = _summary(config, source, genes, qc)
        with atomic_dir(out_dir) as tmp:
            n_genes = write_matrix_pass(source, qc, options, tmp, summary["n_bins"])
            cells = pd.DataFrame({"cell": source.obs.index.astype(str)[qc.cell_keep], "n_genes": n_genes})
            cells = pd.concat([cells, labels[qc.cell_keep].reset_index(drop=True)], axis=1)
            gene_table = pd.DataFrame(
                {
                    "gene": genes[qc.gene_keep],
                    "n_cells": qc.gene_cells[qc.gene_keep],
                    "total": np.rint(qc.gene_totals[qc.gene_keep]).astype(np.int64),
                }
            )
            gene_table.to_csv(tmp / "genes.tsv", sep="\t", index=False, lineterminator="\n")
            cells.to_csv(tmp / "cells.tsv", sep="\t", index=False, lineterminator="\n")
            (tmp / "prepare.json").write_text(dumps_json(summary))
    print(summary_line(summary, out_dir))
