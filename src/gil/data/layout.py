"""On-disk formats of the processed data and of the split: the contract between pipeline stages.

Why: later stages must not re-read the ``.h5ad``; they memory-map plain ``.npy`` arrays (deterministic
bytes, so DVC hashes are stable, and no whole-matrix copy in memory) plus small TSV/JSON tables.

Processed directory (written by ``gil prepare``)::

    indptr.npy   int64  [n_cells + 1]   CSR row pointers
    indices.npy  int32  [nnz]           gene column of each non-zero, sorted within a row
    values.npy   float32 [nnz]          log1p expression (after optional library-size normalisation)
    genes.tsv    columns: gene, n_cells, total
    cells.tsv    columns: cell, n_genes, <label columns...>
    prepare.json summary of what was done

Split directory (written by ``gil split``)::

    gene_sets.json   {"method": ..., "sets": [{"name": "B", "genes": [...]}, {"name": "T1", ...}, ...]}
    cell_stages.npy  int16 [n_cells]: -1 = held-out test cell, -2 = held-out validation cell,
                                      0 = base stage, k = stage k
    tasks.json       {"tasks": [{"name", "label", "learned_at", "classes", "cells", "targets"}]}
                                  (held-out cell indices into the processed rows, and the class index
                                  of each)
    summary.json / summary.txt   counts per stage and overlap checks
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from gil.errors import GilError
from gil.files import atomic_dir, dumps_json

EVAL_STAGE = -1  # held-out test cells: what the benchmark reports on
VALIDATION_STAGE = -2  # held-out validation cells: what sweeps select on, never reported
CellSet = Literal["test", "validation"]
HELD_OUT_STAGE: dict[str, int] = {"test": EVAL_STAGE, "validation": VALIDATION_STAGE}


def _require(path: Path, producer: str) -> Path:
    if not path.exists():
        raise GilError(f"{path} not found; run `gil {producer}` (or `dvc repro`) first")
    return path


def _read_cells(path: Path, names: bool) -> pd.DataFrame:
    """``cells.tsv``: label columns as categories, ``n_genes`` as integers, ``cell`` if ``names``."""
    columns = pd.read_csv(path, sep="\t", nrows=0).columns
    wanted = [column for column in columns if names or column != "cell"]
    dtypes = {column: "category" for column in wanted} | {"cell": str, "n_genes": np.int64}
    return pd.read_csv(path, sep="\t", usecols=wanted, dtype=dtypes, keep_default_na=False)[wanted]


@dataclass(frozen=True)
class ProcessedData:
    """A cells x genes CSR matrix of log1p values with its gene and cell tables."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    genes: pd.DataFrame
    cells: pd.DataFrame
    summary: dict = field(default_factory=dict)
    # The directory it was memory-mapped from: batches read their rows from its files (gil.data.rows).
    source: Path | None = None

    def __getstate__(self) -> dict:
        """Pickled (e.g. to a Ray worker) it carries its arrays, not a path that may not exist there."""
        return {**self.__dict__, "source": None}

    @property
    def n_cells(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def gene_names(self) -> list[str]:
        return self.genes["gene"].astype(str).tolist()

    @classmethod
    def load(cls, directory: Path | str, mmap: bool = True, cell_names: bool = False) -> ProcessedData:
        """Load a processed directory; arrays are memory-mapped unless ``mmap`` is false.

        ``cells`` holds ``n_genes`` and the label columns (as categories); the ``cell`` names only
        with ``cell_names``. Why: no command uses the names, and at 10^6 cells a column of Python
        strings costs ~60 MiB in every process that loads the data (label columns ~55 MiB each).
        """
        directory = _require(Path(directory), "prepare")
        mode = "r" if mmap else None
        return cls(
            indptr=np.load(_require(directory / "indptr.npy", "prepare"), mmap_mode=mode),
            indices=np.load(directory / "indices.npy", mmap_mode=mode),
            values=np.load(directory / "values.npy", mmap_mode=mode),
            genes=pd.read_csv(directory / "genes.tsv", sep="\t", dtype={"gene": str}, keep_default_na=False),
            cells=_read_cells(directory / "cells.tsv", cell_names),
            summary=json.loads((directory / "prepare.json").read_text()),
            source=directory if mmap else None,
        )

    def write(self, directory: Path | str) -> None:
        """Write atomically: the directory appears complete or not at all."""
        with atomic_dir(directory) as tmp:
            np.save(tmp / "indptr.npy", np.asarray(self.indptr, dtype=np.int64))
            np.save(tmp / "indices.npy", np.asarray(self.indices, dtype=np.int32))
            np.save(tmp / "values.npy", np.asarray(self.values, dtype=np.float32))
            self.genes.to_csv(tmp / "genes.tsv", sep="\t", index=False, lineterminator="\n")
            self.cells.to_csv(tmp / "cells.tsv", sep="\t", index=False, lineterminator="\n")
            (tmp / "prepare.json").write_text(dumps_json(self.summary))


@dataclass(frozen=True)
class Task:
    """A downstream classification task on held-out cells: the cells and their class indices."""

    name: str
    label: str
    learned_at: int
    classes: list[str]
    cells: np.ndarray
    targets: np.ndarray

    @property
    def majority_rate(self) -> float:
        """Accuracy of always predicting the most frequent class (the floor a probe must beat)."""
        return float(np.bincount(self.targets).max() / len(self.targets))

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "learned_at": self.learned_at,
            "classes": self.classes,
            "cells": [int(i) for i in self.cells],
            "targets": [int(i) for i in self.targets],
        }

    @classmethod
    def from_json(cls, raw: dict) -> Task:
        return cls(
            name=raw["name"],
            label=raw["label"],
            learned_at=int(raw["learned_at"]),
            classes=list(raw["classes"]),
            cells=np.asarray(raw["cells"], dtype=np.int64),
            targets=np.asarray(raw["targets"], dtype=np.int64),
        )


@dataclass(frozen=True)
class Split:
    """Gene sets ``B, T1..Tn`` (in order), the stage of every cell, and the probe tasks."""

    method: str
    gene_sets: list[tuple[str, list[str]]]
    cell_stages: np.ndarray
    tasks: list[Task]
    summary: dict = field(default_factory=dict)

    @property
    def n_stages(self) -> int:
        """Number of incremental stages (the base stage 0 not counted)."""
        return len(self.gene_sets) - 1

    @property
    def set_names(self) -> list[str]:
        return [name for name, _ in self.gene_sets]

    def cells_of_stage(self, stage: int) -> np.ndarray:
        """Row indices of the cells of ``stage`` (``EVAL_STAGE`` for held-out cells)."""
        return np.flatnonzero(self.cell_stages == stage)

    def held_out_rows(self, cells: CellSet) -> np.ndarray:
        """The rows of the held-out ``cells``: test cells report, validation cells select."""
        rows = self.cells_of_stage(HELD_OUT_STAGE[cells])
        if len(rows) == 0:
            raise GilError(
                f"the split has no {cells} cells; set split.validation_fraction above 0 (e.g. 0.1) and "
                "re-run `gil split` (or `dvc repro`)"
            )
        return rows

    @classmethod
    def load(cls, directory: Path | str) -> Split:
        directory = _require(Path(directory), "split")
        gene_sets = json.loads(_require(directory / "gene_sets.json", "split").read_text())
        tasks = json.loads((directory / "tasks.json").read_text())
        return cls(
            method=gene_sets["method"],
            gene_sets=[(entry["name"], list(entry["genes"])) for entry in gene_sets["sets"]],
            cell_stages=np.load(directory / "cell_stages.npy"),
            tasks=[Task.from_json(raw) for raw in tasks["tasks"]],
            summary=json.loads((directory / "summary.json").read_text()),
        )

    def write(self, directory: Path | str, summary_text: str) -> None:
        """Write atomically; ``summary_text`` is the human-readable summary."""
        with atomic_dir(directory) as tmp:
            sets = [{"name": name, "genes": genes} for name, genes in self.gene_sets]
            (tmp / "gene_sets.json").write_text(dumps_json({"method": self.method, "sets": sets}))
            np.save(tmp / "cell_stages.npy", np.asarray(self.cell_stages, dtype=np.int16))
            (tmp / "tasks.json").write_text(dumps_json({"tasks": [task.to_json() for task in self.tasks]}))
            (tmp / "summary.json").write_text(dumps_json(self.summary))
            (tmp / "summary.txt").write_text(summary_text)
