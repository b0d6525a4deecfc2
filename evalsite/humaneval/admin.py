"""Admin for evaluation rounds."""
