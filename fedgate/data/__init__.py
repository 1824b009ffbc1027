"""HelpSteer-format data: loading and validation, the embedded offline dataset,
federated partitioning, and degradations (semantic noise, conflicting feedback)."""

from fedgate.data.embedded import build_embedded_dataset
from fedgate.data.helpsteer import load_helpsteer
from fedgate.data.noise import add_semantic_noise, conflicting_feedback, noisy_dataset
from fedgate.data.partition import partition_dataset, split_by_prompt
from fedgate.data.schema import ATTRIBUTES, DataError, binarize_misaligned

__all__ = [
    "ATTRIBUTES",
    "DataError",
    "add_semantic_noise",
    "binarize_misaligned",
    "build_embedded_dataset",
    "conflicting_feedback",
    "load_helpsteer",
    "noisy_dataset",
    "partition_dataset",
    "split_by_prompt",
]
