"""AI feedback: preference labels and direct scores from an LLM (PAPER.md sections 1-2)."""
