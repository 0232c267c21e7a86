"""Aggregation strategies: Flower `Strategy` objects, Flower's built-ins by name, and ours."""

from fedsim.strategies.registry import STRATEGIES, build_strategy, register_strategy

__all__ = ["STRATEGIES", "build_strategy", "register_strategy"]
