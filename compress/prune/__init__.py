"""Structured pruning: a smaller dense model with a standard, uniform config."""
