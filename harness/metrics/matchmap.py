"""Match-map scores of image locations against caption tokens (grounding family)."""

__all__: list[str] = []
