"""Report pages: win rates, harmless rates, labeler alignment (issue: metrics and reports)."""
