"""Fine-tuning: the paper's baseline. Each stage trains on its own cells only."""

from __future__ import annotations

from gil.strategies.base import Strategy


class Finetune(Strategy):
    """Plain sequential fine-tuning (the base class behaviour)."""

    kind = "finetune"
