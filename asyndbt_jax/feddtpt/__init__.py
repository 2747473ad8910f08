"""FedDTPT (Wu et al., arXiv 2411.00985): federated discrete prompt tuning.

Server aggregation (``server``): :func:`aggregate` (methods ``"cluster"``, ``"no-cluster"``,
``"fedavg"``, ``"kmeans"``) returning a :class:`GlobalPrompt`, and its kernels
:func:`token_attention`, :func:`pairwise_distances`, :func:`k_distances`,
:func:`knee_epsilon`, :func:`dbscan`, :func:`kmeans`.

Client (``client``): :func:`client_round` with a :class:`ClientConfig` (kinds
``"feedback"``, ``"no-feedback"``, ``"random"``), the proposers :class:`LocalProposer` and
:class:`OpenAIProposer`, and the text helpers :func:`parse_candidates`,
:func:`build_instruction`, :func:`random_edit`.

Federated loop (``loop``): :func:`run_feddtpt` → :class:`FedDTPTResult`, with
:class:`ServerConfig`, :class:`PromptEvaluator`, :class:`WordTable`,
:func:`llm_input_embedder` and :func:`balanced_public_set`.
"""

from .client import (
    CLIENTS,
    ClientConfig,
    ClientRound,
    LocalProposer,
    OpenAIProposer,
    answer_tokens,
    build_instruction,
    client_round,
    parse_candidates,
    prompt_text,
    random_edit,
    task_description,
    vocabulary_words,
    words_of,
)
from .loop import (
    DEFAULT_INITIAL_PROMPT,
    FedDTPTResult,
    PromptEvaluator,
    ServerConfig,
    WordTable,
    balanced_public_set,
    llm_input_embedder,
    run_feddtpt,
)
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
    "CLIENTS",
    "DEFAULT_INITIAL_PROMPT",
    "METHODS",
    "ClientConfig",
    "ClientRound",
    "FedDTPTResult",
    "GlobalPrompt",
    "LocalProposer",
    "OpenAIProposer",
    "PromptEvaluator",
    "ServerConfig",
    "WordTable",
    "aggregate",
    "answer_tokens",
    "balanced_public_set",
    "build_instruction",
    "client_round",
    "dbscan",
    "k_distances",
    "kmeans",
    "knee_epsilon",
    "llm_input_embedder",
    "pairwise_distances",
    "parse_candidates",
    "prompt_text",
    "random_edit",
    "run_feddtpt",
    "task_description",
    "token_attention",
    "vocabulary_words",
    "words_of",
]
