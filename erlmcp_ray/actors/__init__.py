"""Thin Ray actor shells over the pure core (see erlmcp_ray.core)."""
