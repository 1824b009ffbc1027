"""Aggregation rules as pure functions over {name: ndarray}."""
