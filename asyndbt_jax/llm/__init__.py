"""The LLM feedback layer: prompt rendering, local models and OpenAI-compatible servers,
label scoring with shared-prefix reuse, the response cache, and the adapter that turns
sampled configurations into loss tensors. Needs the ``llm`` extra
(``pip install "asyndbt_jax[llm]"``)."""

from .adapter import CONTENT_FREE, NO_DEMONSTRATION, LLMFeedback, PromptTask, calibrate
from .cache import ResponseCache
from .local import MODES, LocalScorer
from .models import GEMMA, SMOLLM2, LoadedModel, cache_root, load_causal_lm
from .openai_backend import BudgetExceeded, OpenAIScorer
from .prompts import FITTED_TEMPLATES, PAPER_TEMPLATES, Template

__all__ = ["CONTENT_FREE", "FITTED_TEMPLATES", "GEMMA", "MODES", "PAPER_TEMPLATES", "SMOLLM2", "BudgetExceeded", "LLMFeedback", "LoadedModel",
           "LocalScorer", "NO_DEMONSTRATION", "OpenAIScorer", "PromptTask", "ResponseCache", "Template", "cache_root", "calibrate",
           "load_causal_lm"]
