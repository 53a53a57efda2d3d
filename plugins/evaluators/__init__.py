"""Evaluators shared by every family: retrieval and zero-shot classification."""
