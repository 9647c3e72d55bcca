"""The persistence selector's decision tree (spec "Selection Algorithm")."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erlmcp_ray.config import Backend
from erlmcp_ray.errors import InvalidValueError
from erlmcp_ray.persistence_selector import (
    SMALL_DATA_BYTES,
    recommend_for_cache,
    recommend_for_registry,
    recommend_for_session,
    recommend_strategy,
)

MB = 1024 * 1024


@pytest.mark.parametrize(("c", "backend"), [
    # the spec's usage example
    ({"data_size": MB, "read_ratio": 0.95, "durability_requirement": "moderate", "cluster_topology": "multi_node"},
     Backend.MEMORY),
    ({"data_size": 500 * MB, "read_ratio": 0.5, "durability_requirement": "none"}, Backend.MEMORY),
    ({"data_size": 500 * MB, "read_ratio": 0.5, "durability_requirement": "high",
      "cluster_topology": "single_node"}, Backend.DISK),
    ({"data_size": 500 * MB, "read_ratio": 0.5, "durability_requirement": "high",
      "cluster_topology": "multi_node"}, Backend.REPLICATED),
    ({"data_size": 50 * MB, "read_ratio": 0.5, "durability_requirement": "moderate",
      "cluster_topology": "single_node"}, Backend.DISK),
    ({"data_size": 50 * MB, "read_ratio": 0.5, "durability_requirement": "moderate",
      "cluster_topology": "multi_node"}, Backend.REPLICATED),
    # the boundaries are strict, as drawn: < 100 MB and > 90 %
    ({"data_size": SMALL_DATA_BYTES, "read_ratio": 0.99, "durability_requirement": "moderate"}, Backend.REPLICATED),
    ({"data_size": MB, "read_ratio": 0.90, "durability_requirement": "moderate"}, Backend.REPLICATED),
    # high durability wins over the read-mostly shortcut (a deliberate difference, see the module)
    ({"data_size": MB, "read_ratio": 0.99, "durability_requirement": "high", "cluster_topology": "multi_node"},
     Backend.REPLICATED),
])
def test_the_selection_tree(c, backend):
    s = recommend_strategy(c)
    assert s.backend is backend and s.reason
    assert s.spec_name == {Backend.MEMORY: "ETS", Backend.DISK: "DETS", Backend.REPLICATED: "Mnesia"}[backend]


def test_recommendations_for_the_spec_domains():
    assert recommend_for_session().backend is Backend.REPLICATED
    assert recommend_for_cache().backend is Backend.MEMORY
    assert recommend_for_registry().backend is Backend.MEMORY


@pytest.mark.parametrize("c", [
    "not a dict", {"data_size": -1}, {"data_size": math.inf}, {"data_size": "1MB"}, {"data_size": True},
    {"read_ratio": 1.5}, {"read_ratio": math.nan}, {"durability_requirement": "extreme"},
    {"cluster_topology": "galaxy"}, {"durability": "high"},
])
def test_bad_characteristics_are_refused_naming_the_field(c):
    with pytest.raises(InvalidValueError):
        recommend_strategy(c)


@given(size=st.integers(min_value=0, max_value=10**12), reads=st.floats(min_value=0, max_value=1),
       durability=st.sampled_from(["none", "moderate", "high", "High", "MODERATE"]),
       topology=st.sampled_from(["single_node", "multi_node", "single-node"]))
def test_every_workload_gets_a_backend_and_high_durability_never_gets_memory(size, reads, durability, topology):
    s = recommend_strategy({"data_size": size, "read_ratio": reads, "durability_requirement": durability,
                            "cluster_topology": topology})
    assert isinstance(s.backend, Backend)
    if durability.lower() == "high":
        assert s.backend is not Backend.MEMORY
    if s.backend is Backend.REPLICATED:
        assert s.characteristics["cluster_topology"] == "multi_node"
