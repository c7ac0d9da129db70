"""Metrics sinks, progress bar and plots."""
