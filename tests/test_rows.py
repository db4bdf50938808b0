"""Row reads for batches: positioned reads from the files equal reads from the arrays."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from factories import make_processed, make_split

from gil.data.batches import BatchBuilder
from gil.data.layout import ProcessedData
from gil.data.rows import RowArrays, RowFiles, row_reader
from gil.data.vocab import Vocabulary
from gil.errors import GilError


@pytest.fixture()
def on_disk(tmp_path: Path) -> tuple[ProcessedData, ProcessedData]:
    """The same matrix in memory and loaded back from a written directory (with an empty row)."""
    data = make_processed(n_cells=50, n_genes=30, density=0.4)
    indptr = data.indptr.copy()
    indptr[8:] -= indptr[8] - indptr[7]  # row 7 keeps no non-zero
    keep = np.ones(len(data.indices), bool)
    keep[data.indptr[7] : data.indptr[8]] = False
    data = ProcessedData(indptr, data.indices[keep], data.values[keep], data.genes, data.cells, data.summary)
    data.write(tmp_path / "processed")
    return data, ProcessedData.load(tmp_path / "processed")


def test_loaded_data_reads_rows_from_files_and_memory_data_from_arrays(on_disk) -> None:
    in_memory, loaded = on_disk
    assert isinstance(row_reader(loaded), RowFiles)
    assert isinstance(row_reader(in_memory), RowArrays)
    assert isinstance(row_reader(ProcessedData.load(loaded.source, mmap=False)), RowArrays)


def test_file_reads_equal_array_reads_for_any_row_order(on_disk) -> None:
    in_memory, loaded = on_disk
    rows = np.array([7, 3, 3, 49, 0, 7, 12, 48])  # repeats, an empty row, unsorted, first and last
    expected = RowArrays(in_memory).read(rows)
    got = row_reader(loaded).read(rows)
    assert got[1].dtype == np.int32 and got[2].dtype == np.float32
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)
    assert expected[0][0] == 0 and len(expected[1]) == expected[0].sum() > 0


def test_batches_are_identical_from_files_and_from_memory(on_disk) -> None:
    in_memory, loaded = on_disk
    split = make_split(in_memory)
    vocab = Vocabulary.from_split(split)
    rows = np.flatnonzero(split.cell_stages >= 0)
    from_memory = BatchBuilder(in_memory, vocab, split.cell_stages, 6).training_batch(
        rows, np.random.default_rng(4), 0.4
    )
    from_files = BatchBuilder(loaded, vocab, split.cell_stages, 6).training_batch(
        rows, np.random.default_rng(4), 0.4
    )
    for name in ("genes", "values", "targets", "masked", "padding", "gene_sets", "rows"):
        assert np.array_equal(getattr(from_files, name).numpy(), getattr(from_memory, name).numpy()), name


def test_pickled_data_carries_arrays_not_the_path(on_disk) -> None:
    _, loaded = on_disk
    restored = pickle.loads(pickle.dumps(loaded))
    assert loaded.source is not None and restored.source is None
    assert isinstance(row_reader(restored), RowArrays)
    np.testing.assert_array_equal(restored.values, loaded.values)


def test_truncated_or_mistyped_files_give_a_clear_error(on_disk) -> None:
    _, loaded = on_disk
    values = loaded.source / "values.npy"
    values.write_bytes(values.read_bytes()[:-8])
    with pytest.raises(GilError, match=r"values.npy ends early \(truncated\); re-run `gil prepare`"):
        row_reader(loaded).read(np.array([len(loaded.indptr) - 2]))
    np.save(loaded.source / "indices.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(GilError, match="indices.npy: expected a 1-D int32 array"):
        row_reader(loaded)
