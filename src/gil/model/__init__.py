"""The gene transformer (a plain ``nn.Module``, no continual-learning logic)."""

from gil.model.transformer import GeneTransformer, ModelOutput, masked_value_loss

__all__ = ["GeneTransformer", "ModelOutput", "masked_value_loss"]
