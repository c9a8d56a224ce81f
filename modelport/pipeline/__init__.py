"""Build pipelines: one recipe exports every source to every target, in parallel or on a Ray cluster, gated,
incrementally, with a manifest, a JUnit file and model cards (README "Build pipelines")."""
from .run import run

__all__ = ["run"]
