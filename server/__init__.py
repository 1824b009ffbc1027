"""Flower ServerApp and strategy for fedgate (see the federation issue)."""
