"""Measuring a model's quality on the user's own data: retrieval (`evaluate_retrieval`, trec_eval's metrics) and
semantic similarity (`evaluate_sts`)."""

from .retrieval import Report, evaluate_retrieval
from .sts import StsReport, evaluate_sts

__all__ = ["Report", "StsReport", "evaluate_retrieval", "evaluate_sts"]
