"""Probes of a semantic space: clustering, concreteness, composition, composed image search."""

__all__: list[str] = []
