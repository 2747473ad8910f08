"""FedDTPT's server aggregation at paper scale: JAX ``aggregate`` vs scikit-learn's DBSCAN.

    python benchmarks/feddtpt_server.py [--quick] [--json] [--out FILE]

Ten clients × 75 tokens (the paper's prompt length; quick: 10 × 20) with 384-dim embeddings
(all-MiniLM-L6-v2's width), planted as 12 well-separated topics plus noise, 20 % of the
positions masked. Times every server method of :func:`asyndbt_jax.feddtpt.aggregate`
(compiled; the first call is reported apart) and, for the clustering step alone,
scikit-learn's DBSCAN on the same unit embeddings with the ε the JAX knee chose (the test
reference, on the host). Also reports whether both DBSCANs found the same partition and on
how many points their noise labels differ. Never asserts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from asyndbt_jax.feddtpt import METHODS, aggregate, dbscan, knee_epsilon  # noqa: E402


def planted(R: int, L: int, d: int, topics: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, d))
    topic = rng.integers(0, topics, size=(R, L))
    emb = centres[topic] + 0.05 * rng.normal(size=(R, L, d))
    mask = rng.random((R, L)) > 0.2
    vocab = np.concatenate([centres, rng.normal(size=(200, d))])
    tokens = topic.astype(np.int32)
    return (jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(emb, jnp.float32), jnp.asarray(vocab, jnp.float32))


def main():
    args = _common.parse_args(__doc__.splitlines()[0])
    R, L, d, topics = (10, 20, 384, 12) if args.quick else (10, 75, 384, 12)
    tokens, mask, emb, vocab = planted(R, L, d, topics)
    out = {"benchmark": "feddtpt_server", **_common.machine(),
           "inputs": {"clients": R, "tokens_per_client": L, "embedding_dim": d, "topics": topics, "quick": args.quick}}
    methods = {}
    for method in METHODS:
        fn = jax.jit(lambda t, m, e, v, k, method=method: aggregate(t, m, e, v if method == "fedavg" else None,
                                                                   method=method, max_length=L, key=k))
        timing = _common.time_call(fn, tokens, mask, emb, vocab, jax.random.key(0))
        result = fn(tokens, mask, emb, vocab, jax.random.key(0))
        methods[method] = {**timing, "prompt_length": int(np.asarray(result.mask).sum()),
                           "num_clusters": int(result.num_clusters)}
        _common.log(args, f"{method}: {timing['median_s'] * 1e3:.2f} ms (first call {timing['first_call_s']:.2f} s)")
    out["aggregate"] = methods

    # the clustering step alone: JAX DBSCAN vs scikit-learn on the same points and ε
    flat_emb = emb.reshape(R * L, d)
    flat_emb = flat_emb / jnp.linalg.norm(flat_emb, axis=1, keepdims=True)  # unit vectors, as aggregate uses
    flat_mask = mask.reshape(R * L)
    eps = knee_epsilon(flat_emb, flat_mask, 1)
    jax_dbscan = jax.jit(lambda e, m, eps: dbscan(e, m, eps, 2))
    jax_time = _common.time_call(jax_dbscan, flat_emb, flat_mask, eps)
    labels = np.asarray(jax_dbscan(flat_emb, flat_mask, eps))[np.asarray(flat_mask)]
    try:
        from sklearn.cluster import DBSCAN

        points = np.asarray(flat_emb)[np.asarray(flat_mask)]
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            ref = DBSCAN(eps=float(eps), min_samples=2).fit(points).labels_
            times.append(time.perf_counter() - t0)
        sk = {"median_s": float(np.median(times)), "repeats_s": times,
              "num_clusters": int(ref.max() + 1), "same_partition": _same_partition(labels, ref),
              # points one calls noise and the other does not: ε is itself a k-distance, so a
              # neighbour at exactly ε falls either side with float32 round-off
              "noise_mismatch": int(np.sum((labels < 0) != (ref < 0)))}
    except ImportError:
        sk = None
    out["dbscan"] = {"eps": float(eps), "jax": {**jax_time, "num_clusters": int(len(set(labels[labels >= 0])))},
                     "sklearn": sk,
                     "sklearn_over_jax": None if sk is None else sk["median_s"] / jax_time["median_s"]}
    _common.emit(out, args)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the clusters (noise, -1, must match exactly)."""
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = set(zip(a[a >= 0].tolist(), b[b >= 0].tolist()))
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


if __name__ == "__main__":
    main()
