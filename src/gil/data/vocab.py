"""The gene vocabulary: token ids in the order genes become known.

Why: in gene-incremental learning the model's embedding table grows stage by stage. Ordering tokens
as ``<pad>, <cls>, B..., T1..., T2...`` makes "the genes known after stage k" a prefix of the
vocabulary, so growing the table is an append and old token ids never move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gil.data.layout import Split
from gil.errors import GilError

PAD = 0
CLS = 1
SPECIAL_TOKENS = ("<pad>", "<cls>")
NO_SET = -1


@dataclass(frozen=True)
class Vocabulary:
    """Token ids of the genes of every gene set, and the maps the batch builder needs."""

    genes: tuple[str, ...]
    set_sizes: tuple[int, ...]

    @classmethod
    def from_split(cls, split: Split) -> Vocabulary:
        genes = tuple(gene for _, set_genes in split.gene_sets for gene in set_genes)
        return cls(genes=genes, set_sizes=tuple(len(set_genes) for _, set_genes in split.gene_sets))

    @property
    def n_stages(self) -> int:
        """Incremental stages (the base stage not counted)."""
        return len(self.set_sizes) - 1

    @property
    def size(self) -> int:
        """Tokens including the special tokens."""
        return len(SPECIAL_TOKENS) + len(self.genes)

    def size_through(self, stage: int) -> int:
        """Number of tokens known after ``stage`` (a prefix of the vocabulary)."""
        return len(SPECIAL_TOKENS) + sum(self.set_sizes[: stage + 1])

    def genes_through(self, stage: int) -> list[str]:
        """Names of the genes known after ``stage``, in token order."""
        return list(self.genes[: self.size_through(stage) - len(SPECIAL_TOKENS)])

    def set_of_token(self) -> np.ndarray:
        """Gene-set index (0 = B, k = Tk) of every token id; ``NO_SET`` for special tokens."""
        sets = np.repeat(np.arange(len(self.set_sizes), dtype=np.int16), self.set_sizes)
        return np.concatenate([np.full(len(SPECIAL_TOKENS), NO_SET, dtype=np.int16), sets])

    def token_of_column(self, processed_genes: list[str]) -> np.ndarray:
        """Token id of every gene column of the processed matrix (genes of no set are an error)."""
        index = {gene: token for token, gene in enumerate(self.genes, start=len(SPECIAL_TOKENS))}
        missing = [gene for gene in processed_genes if gene not in index]
        if missing:
            raise GilError(
                f"{len(missing)} processed genes (e.g. {missing[:3]}) are in no gene set; "
                "the split is stale: rerun `gil split` (or `dvc repro`)"
            )
        return np.array([index[gene] for gene in processed_genes], dtype=np.int32)
