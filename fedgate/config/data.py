"""Where the rows come from and how they are labelled (``[data]``)."""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.config.values import positive


@dataclass(frozen=True)
class DataConfig:
    source: str = "embedded"  # embedded | nvidia/HelpSteer | nvidia/HelpSteer2 | file or folder
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    seed: int = 0
    label_noise: float = 0.2  # embedded dataset only
    max_response_chars: int = 600  # embedded dataset only
    misaligned_threshold: int = 2  # misaligned = true helpfulness <= this
    limit: int = 0  # use at most this many training rows (0 = all; pairs for preference data)
    bad_rows: str = "error"  # preference-pair files: "error" stops at a malformed row, "skip" counts and skips it

    def __post_init__(self) -> None:
        if self.bad_rows not in ("error", "skip"):
            raise ValueError(f"data.bad-rows must be 'error' or 'skip', got {self.bad_rows!r}")
        if not 0 <= self.misaligned_threshold < 4:
            raise ValueError(f"data.misaligned-threshold must be in 0..3, got {self.misaligned_threshold}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"data.label-noise must be in [0, 1], got {self.label_noise}")
        if self.limit < 0:
            raise ValueError(f"data.limit must be >= 0 (0 = all rows), got {self.limit}")
        positive("data.max-response-chars", self.max_response_chars)
