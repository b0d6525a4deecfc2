"""Human evaluation: rounds, the annotator queue, blinded ranking pages (issue: human evaluation)."""
