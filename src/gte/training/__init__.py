"""Fine-tuning: data (`data`), losses exact to sentence-transformers' (`losses`), the packed forward and its
gradient cache (`forward`), checkpoints in the source's layout (`checkpoint`), torchrun (`distributed`), and
the loop (`trainer`)."""

from .trainer import Result, train

__all__ = ["Result", "train"]
