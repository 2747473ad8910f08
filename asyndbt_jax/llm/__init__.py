"""The LLM feedback layer: local models, label scoring with shared-prefix reuse, and the
response cache. Needs the ``llm`` extra (``pip install "asyndbt_jax[llm]"``)."""

from .cache import ResponseCache
from .local import MODES, LocalScorer
from .models import GEMMA, SMOLLM2, LoadedModel, cache_root, load_causal_lm

__all__ = ["GEMMA", "MODES", "SMOLLM2", "LoadedModel", "LocalScorer", "ResponseCache", "cache_root", "load_causal_lm"]
