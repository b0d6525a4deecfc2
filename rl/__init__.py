"""Reward models, SFT, sampling and RL (PAPER.md sections 2-3)."""
