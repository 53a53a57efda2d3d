"""Imported by the ``processes`` launcher's fork server before it forks any worker: torch, the harness
and every installed plugin, so that each worker starts with them loaded."""

from harness.registry import default_registry
import harness.runner  # what every worker runs

default_registry()
assert harness.runner
