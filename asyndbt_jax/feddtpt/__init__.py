"""FedDTPT (Wu et al., arXiv 2411.00985; spec §8): federated discrete prompt tuning.

Server aggregation (``server``): :func:`aggregate` (methods ``"cluster"``, ``"no-cluster"``,
``"fedavg"``, ``"kmeans"``) returning a :class:`GlobalPrompt`, and its kernels
:func:`token_attention`, :func:`pairwise_distances`, :func:`k_distances`,
:func:`knee_epsilon`, :func:`dbscan`, :func:`kmeans`.
"""

from .server import (
    METHODS,
    GlobalPrompt,
    aggregate,
    dbscan,
    k_distances,
    kmeans,
    knee_epsilon,
    pairwise_distances,
    token_attention,
)

__all__ = [
    "METHODS",
    "GlobalPrompt",
    "aggregate",
    "dbscan",
    "k_distances",
    "kmeans",
    "knee_epsilon",
    "pairwise_distances",
    "token_attention",
]
