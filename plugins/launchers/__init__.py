"""Launcher plugins: where a benchmark's jobs run."""
