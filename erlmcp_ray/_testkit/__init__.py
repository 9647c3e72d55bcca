"""Test kit behind ``erlmcp_ray.testing``: the fake transport and the linearizability checker."""
