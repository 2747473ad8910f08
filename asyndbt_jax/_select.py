"""Exact order statistics along a leading axis without sorting (shared by
:mod:`asyndbt_jax.aggregators` and the FedDTPT server).

Float values map to unsigned integer keys that sort as the floats do; the ``k``-th smallest
key of every column is then built bit by bit from the top, one counting pass over the keys
per bit (32 for float32). Exact, ties included, and several ranks share the passes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._checks import per_worker


def _order_keys(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Unsigned integer keys ``[R, D]`` that sort exactly as the float values of ``x`` (IEEE
    order: negatives have every bit flipped, non-negatives only the sign bit), with
    masked-out workers at the largest key so they rank after every participant."""
    utype = jnp.uint64 if x.dtype == jnp.float64 else jnp.uint32
    nbits = 64 if utype == jnp.uint64 else 32
    u = jax.lax.bitcast_convert_type(x, utype)
    sign = jnp.asarray(1, utype) << (nbits - 1)
    keys = jnp.where((u & sign) != 0, ~u, u | sign)
    return jnp.where(per_worker(mask, keys), keys, jnp.asarray(jnp.iinfo(utype).max, utype))


def _from_keys(keys: jax.Array, dtype) -> jax.Array:
    nbits = jnp.iinfo(keys.dtype).bits
    sign = jnp.asarray(1, keys.dtype) << (nbits - 1)
    return jax.lax.bitcast_convert_type(jnp.where((keys & sign) != 0, keys & ~sign, ~keys), dtype)


def _select_keys(keys: jax.Array, ranks: jax.Array) -> jax.Array:
    """``out[k, d]``: the ``ranks[k]``-th smallest (0-based) key of column ``d`` of ``keys [R, D]``.

    Exact, ties included: the answer is built bit by bit from the top, one counting pass
    over ``keys`` per bit (32 for float32), instead of sorting every column."""
    nbits = jnp.iinfo(keys.dtype).bits
    one = jnp.asarray(1, keys.dtype)

    def body(i, prefix):
        bit = one << (nbits - 1 - i).astype(keys.dtype)
        below = jnp.sum(keys[None] <= (prefix | (bit - one))[:, None, :], axis=1, dtype=jnp.int32)
        return jnp.where(below <= ranks[:, None], prefix | bit, prefix)

    return jax.lax.fori_loop(0, nbits, body, jnp.zeros((ranks.shape[0], keys.shape[1]), keys.dtype))


def _select_keys_blocked(keys: jax.Array, ranks: jax.Array) -> jax.Array:
    """:func:`_select_keys` over column blocks of about 2 MiB, so that on a CPU the 32 passes
    hit the cache (7-8x faster than one pass over the whole array at R = 1,000)."""
    R, D = keys.shape
    block = max(8, min(D, (2 << 20) // (keys.dtype.itemsize * R)))
    nb = -(-D // block)
    padded = jnp.pad(keys, ((0, 0), (0, nb * block - D)))
    blocks = padded.reshape(R, nb, block).transpose(1, 0, 2)
    out = jax.lax.map(lambda kb: _select_keys(kb, ranks), blocks)  # [nb, K, block]
    return out.transpose(1, 0, 2).reshape(ranks.shape[0], nb * block)[:, :D]


def _order_statistics(x: jax.Array, mask: jax.Array, ranks: jax.Array) -> jax.Array:
    """``[K, ...]``: the ``ranks[k]``-th smallest participating value of ``x [R, ...]`` along
    the worker axis (exact; half-precision inputs are compared in float32)."""
    R = x.shape[0]
    work = x if x.dtype in (jnp.float32, jnp.float64) else x.astype(jnp.float32)
    keys = _order_keys(work.reshape(R, -1), mask)
    ranks = jnp.asarray(ranks, jnp.int32)
    picked = jax.lax.platform_dependent(keys, ranks, cpu=_select_keys_blocked, default=_select_keys)
    return _from_keys(picked, work.dtype).reshape((ranks.shape[0],) + x.shape[1:])
