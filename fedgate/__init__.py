"""fedgate: federated fine-tuning with gated low-rank adapters."""

__version__ = "0.1.0"
