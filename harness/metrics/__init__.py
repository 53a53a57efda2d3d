"""Pure metric functions: tensors or arrays in, plain python numbers (or tensors) out, no model needed.

Evaluators and losses call these; tests check them against naive float64 computations. One module per
concern, every public name importable from ``harness.metrics``.
"""

from harness.metrics.matchmap import *  # noqa: F401,F403
from harness.metrics.matchmap import __all__ as _matchmap
from harness.metrics.ranking import ranking_metrics  # noqa: F401
from harness.metrics.retrieval import *  # noqa: F401,F403
from harness.metrics.retrieval import __all__ as _retrieval
from harness.metrics.semantic import *  # noqa: F401,F403
from harness.metrics.semantic import __all__ as _semantic

__all__ = [*_retrieval, *_matchmap, *_semantic, "ranking_metrics"]
