"""Reward models, SFT, sampling and RL (docs/method.md §§2-3)."""
