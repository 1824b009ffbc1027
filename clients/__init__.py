"""Flower ClientApp for fedgate (see the federation issue)."""
