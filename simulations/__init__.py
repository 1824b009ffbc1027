"""Launchers and experiment scripts."""
