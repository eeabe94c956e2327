"""Batch evaluation: datasets, the concurrent runner, results files and reports."""
