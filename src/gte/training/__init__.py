"""Fine-tuning: data (`data`), losses exact to sentence-transformers' (`losses`), the packed forward and its
gradient cache (`forward`), the tasks (`embedding`, `reranking`), checkpoints in the source's layout
(`checkpoint`), torchrun (`distributed`), and the loop (`trainer`)."""

from .trainer import Result, train, train_rerank

__all__ = ["Result", "train", "train_rerank"]
