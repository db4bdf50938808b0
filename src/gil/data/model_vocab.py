"""Matching the dataset's genes to a pretrained model's vocabulary by symbol.

Why these case rules: scGPT's human vocabulary holds HGNC symbols (``CD3E``), while mouse data and
many tables write ``Cd3e``; an exact-only match would find almost nothing there, and a blind
case-insensitive one would merge distinct symbols that differ only in case. So:

1. a dataset gene whose symbol is in the vocabulary exactly takes that row;
2. otherwise it takes the row of the one vocabulary symbol equal to it up to case (``str.casefold``),
   when exactly one vocabulary symbol is, that row is not already taken by an exact match, and no
   other dataset gene claims the same row up to case;
3. every other gene is new to the model (ambiguous ones included), and so is a gene matching a
   special token (``<pad>``, ``<cls>``, ``<eoc>``).

A vocabulary row is used by at most one dataset gene, so the imported embedding table never holds
one pretrained row twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence


def match_genes(genes: Sequence[str], model_genes: Mapping[str, int]) -> list[int | None]:
    """The model's row of every dataset gene (None: new to the model), by the rules above."""
    rows: list[int | None] = [model_genes.get(gene) for gene in genes]
    taken = {row for row in rows if row is not None}
    folded: dict[str, list[int]] = {}
    for symbol, row in model_genes.items():
        folded.setdefault(symbol.casefold(), []).append(row)
    candidates = {
        position: folded[gene.casefold()][0]
        for position, gene in enumerate(genes)
        if rows[position] is None and len(folded.get(gene.casefold(), ())) == 1
    }
    claims = Counter(candidates.values())
    for position, row in candidates.items():
        if row not in taken and claims[row] == 1:
            rows[position] = row
    return rows
