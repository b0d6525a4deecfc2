"""AI feedback: preference labels and direct scores from an LLM (docs/method.md §§1-2)."""
