"""A straightforward NumPy, per-worker-loop implementation of one AsynDBT server iteration.

A Python loop over workers (as a plain federated simulation would do), each worker's
maths vectorised with NumPy (float64).

The reference for ``asyndbt_jax.engine.server_step``: accept messages (``p`` and the
workers' cut terms ``e_lᵀq``), server z/λ update, cut drop; every ``δ`` iterations a
polyhedron refresh with the value-function gap (``K`` primal-dual rounds on the training
batches, the evaluations at the point and at ``φ``, a new cut with coefficients on ``p``, ``z``
and ``q``); then every arrived worker samples, queries the planted oracle, estimates, clips,
adds the cut forces on ``p`` and ``q`` and takes a projected Adam step. It consumes the same
random uniforms as the JAX step (drawn with the same keys), so the same seed gives the same
result up to float rounding.
Used by ``benchmarks/core_step.py`` (speed baseline) and ``tests/test_core_step.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np


def project(v):
    """Sort-based projection of every row (last axis) onto the simplex (float64, vectorised over rows)."""
    u = -np.sort(-v, axis=-1)
    css = np.cumsum(u, axis=-1)
    k = np.arange(1, v.shape[-1] + 1)
    rho = np.sum(u - (css - 1) / k > 0, axis=-1, keepdims=True)
    theta = (np.take_along_axis(css, rho - 1, axis=-1) - 1) / rho
    return np.maximum(v - theta, 0)


@dataclass
class NumpyState:
    p: np.ndarray  # [R, M, N]
    q: np.ndarray  # [R, U, V]
    adam_p: list  # per worker [mu, nu] for p
    adam_q: list
    count: np.ndarray  # [R] Adam step counts
    z: np.ndarray
    rho: np.ndarray
    cut_a: np.ndarray  # [R, M, C, N]
    cut_b: np.ndarray  # [M, C, N]
    cut_e: np.ndarray  # [R, C, U, V]
    cut_c: np.ndarray  # [H, C]: H = M (a cut set per fragment row) or 1 (one set, the value-function gap)
    cut_active: np.ndarray
    cut_lambda: np.ndarray
    demo_terms: np.ndarray  # [R, C] the latest e_lᵀq every worker reported
    received: np.ndarray
    staleness: np.ndarray
    iteration: int
    rejected: int


def from_engine(state) -> NumpyState:
    """Copy an engine state whose Adam moments are still zero (fresh) into NumPy."""
    f = lambda x: np.array(x, np.float64)  # noqa: E731
    s, w = state.server, state.workers
    R = s.duals.shape[0]
    return NumpyState(
        p=f(w.selection.fragment_probs),
        q=f(w.selection.demo_probs),
        adam_p=[[np.zeros_like(f(w.selection.fragment_probs[v]))] * 2 for v in range(R)],
        adam_q=[[np.zeros_like(f(w.selection.demo_probs[v]))] * 2 for v in range(R)],
        count=np.zeros(R, int),
        z=f(s.consensus),
        rho=f(s.duals),
        cut_a=np.stack([f(a) for a in s.cuts.worker_coef], axis=2),  # C slots [R, M, N] -> [R, M, C, N]
        cut_b=f(s.cuts.consensus_coef),
        cut_e=np.stack([f(e) for e in s.cuts.demo_coef], axis=1),  # C slots [R, U, V] -> [R, C, U, V]
        cut_c=f(s.cuts.offset),
        cut_active=np.array(s.cuts.active),
        cut_lambda=f(s.cuts.duals),
        demo_terms=f(s.demo_terms),
        received=f(s.received),
        staleness=np.array(s.staleness),
        iteration=int(s.iteration),
        rejected=int(s.rejected),
    )


def oracle_losses(oracle, demos, words, qtype, label, clean, difficulty):
    """Losses [I, B] of one worker's I configurations on its B queries (NumPy, one worker)."""
    D, W, C = (np.asarray(x, np.float64) for x in (oracle.demo_utility, oracle.word_utility, oracle.interaction))
    style = np.asarray(oracle.demo_style)
    U, M, S = D.shape[0], W.shape[0], C.shape[-1] - 1
    cls = np.arange(U)
    has_d = demos >= 0
    safe_d = np.where(has_d, demos, 0)
    demo_part = np.where(has_d[..., None], D[cls, safe_d], 0).sum(-2) / U  # [I, T]
    styles = np.where(has_d, style[cls, safe_d], S)  # [I, U]
    pos = np.arange(M)
    has_w = words >= 0
    safe_w = np.where(has_w, words, 0)
    w = np.where(has_w[..., None], W[pos, safe_w], 0).sum(-2)  # [I, T]
    c = np.where(has_w[..., None], C[pos, safe_w], 0).sum(-2)  # [I, S+1]
    coupling = np.take_along_axis(c, styles, -1).mean(-1)  # [I]
    per_type = float(oracle.bias) + demo_part + (w + coupling[:, None]) / max(M, 1)  # [I, T]
    margin = per_type[:, qtype] - difficulty[None]  # [I, B]
    logits = np.zeros(margin.shape + (U,))
    np.put_along_axis(logits, np.broadcast_to(clean, margin.shape)[..., None], margin[..., None], -1)
    logits -= logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits).sum(-1))
    return -(np.take_along_axis(logits, np.broadcast_to(label, margin.shape)[..., None], -1)[..., 0] - log_z)


def draw(probs, uniforms):
    """Inverse-CDF draws: probs [rows, n], uniforms [rows, I] -> samples [I, rows]."""
    cdf = np.cumsum(np.maximum(probs, 0), -1)
    targets = uniforms * cdf[:, -1:]
    idx = np.sum(cdf[:, None, :] <= targets[:, :, None], axis=-1)
    return np.minimum(idx, probs.shape[1] - 1).T


def policy_gradient(probs, samples, losses):
    I, rows = samples.shape
    w = (losses - losses.mean()) / (I - 1)
    counts = np.zeros_like(probs)
    np.add.at(counts, (np.broadcast_to(np.arange(rows), samples.shape), samples), np.broadcast_to(w[:, None], samples.shape))
    return np.where(probs > 0, counts / np.where(probs > 0, probs, 1), 0.0)


def adam(param, grad, moments, t, lr, b1=0.9, b2=0.999, eps=1e-8):
    mu = b1 * moments[0] + (1 - b1) * grad
    nu = b2 * moments[1] + (1 - b2) * grad**2
    step = -lr * (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps)
    return project(param + step), [mu, nu]


def _uniforms(key, R, M, U, I):
    """The uniforms ``sample_configurations`` draws from ``key``: fragment ``[R, M, I]``,
    demonstrations ``[R, U, I]``; worker ``v`` draws from its own stream ``fold_in(key, v)``."""
    k_frag, k_demo = jax.random.split(key)

    def draw(k, rows):  # one call for all workers: the reference's timing is its own maths, not R dispatches
        per_worker = jax.vmap(lambda v: jax.random.uniform(jax.random.fold_in(k, v), (rows, I)))
        return np.asarray(per_worker(np.arange(R)), np.float64)

    return draw(k_frag, M), draw(k_demo, U)


def _losses(oracle, queries, v, demos, words):
    fields = (queries.query_type, queries.label, queries.clean_label, queries.difficulty)
    return oracle_losses(oracle, demos, words, *(np.asarray(x[v]) for x in fields)).mean(-1)


def _evaluation(oracle, p_v, q_v, train, v, u_frag, u_demo):
    """One worker's training-loss estimates at ``(p, q)``: gradients on both and the mean loss."""
    words, demos = draw(p_v, u_frag[v]), draw(q_v, u_demo[v])
    losses = _losses(oracle, train, v, demos, words)
    return policy_gradient(p_v, words, losses), policy_gradient(q_v, demos, losses), losses.mean()


def _lower_round(config, st, p, z, rho, grads):
    """One primal-dual round of every worker (worker step, server ψ-sign z step, dual step)."""
    R = p.shape[0]
    for v in range(R):
        d = p[v] - z
        p[v] = project(p[v] - config.lower_lr * (grads[v] + rho[v] + config.penalty() * d + config.psi * np.sign(d)))
    agg = np.zeros_like(z)
    for v in range(R):
        d = z - p[v]
        agg += -rho[v] + config.penalty() * d + config.psi * np.sign(d)
    z = project(z - config.eta_consensus() * agg)
    for v in range(R):
        rho[v] = rho[v] + config.dual_rate() * (p[v] - z)
    return p, z, rho


def numpy_refresh(config, oracle, st: NumpyState, train, key):
    """A polyhedron refresh with the value-function gap, worker by worker."""
    R, M = st.p.shape[:2]
    U, I = st.q.shape[1], config.num_samples
    k_first, k_rest = jax.random.split(key)
    p0, z0, rho0 = st.received.copy(), st.z.copy(), st.rho.copy()
    u_first = _uniforms(k_first, R, M, U, I)
    at_point = [_evaluation(oracle, p0[v], st.q[v], train, v, *u_first) for v in range(R)]
    p, z, rho = _lower_round(config, st, p0.copy(), z0.copy(), rho0.copy(), [g[0] for g in at_point])
    for round_key in (jax.random.split(k_rest, config.lower_rounds - 1) if config.lower_rounds > 1 else []):
        u = _uniforms(round_key, R, M, U, I)
        p, z, rho = _lower_round(config, st, p, z, rho, [_evaluation(oracle, p[v], st.q[v], train, v, *u)[0] for v in range(R)])
    at_phi = [_evaluation(oracle, p[v], st.q[v], train, v, *u_first) for v in range(R)]

    h = _combine(config, np.array([at_point[v][2] - at_phi[v][2] for v in range(R)]))  # the loss the lower level would still remove
    a = [at_point[v][0] for v in range(R)]
    b = np.zeros_like(z0)
    e = [at_point[v][1] - at_phi[v][1] for v in range(R)]
    terms = [float(np.sum(e[v] * st.q[v])) for v in range(R)]
    eps = config.eps()
    if h > eps:
        score = np.where(st.cut_active[0], st.cut_lambda[0], -np.inf)
        slot = int(np.argmin(score))
        st.cut_c[0, slot] = h - _combine(config, np.array([np.sum(a[v] * p0[v]) + terms[v] for v in range(R)])) - np.sum(b * z0) - eps
        for v in range(R):
            st.cut_a[v, :, slot] = a[v]
            st.cut_e[v, slot] = e[v]
            st.demo_terms[v, slot] = terms[v]
        st.cut_b[:, slot] = b
        st.cut_active[0, slot] = True
        st.cut_lambda[0, slot] = 0.0
    st.rho = rho
    return st


def _combine(config, terms):
    """The server's combination of per-worker terms ``[R, ...]`` that the paper sums: the sum
    for ``mean``, ``R ×`` the median for the ψ-sign rule (the rules this reference covers)."""
    if config.aggregator == "mean":
        return terms.sum(0)
    assert config.aggregator == "sign_consensus", config.aggregator
    return terms.shape[0] * np.median(terms, axis=0)


def _values(config, st):
    """Every cut's value over the server's latest copies ``[H, C]`` (0 where inactive)."""
    if st.cut_c.shape[0] == 1:  # one set of cuts over every row, with the workers' demonstration terms
        per_worker = np.einsum("rmcn,rmn->rc", st.cut_a, st.received) + st.demo_terms
        values = (_combine(config, per_worker) + np.einsum("mcn,mn->c", st.cut_b, st.z))[None]
    else:
        values = _combine(config, np.einsum("rmcn,rmn->rmc", st.cut_a, st.received)) + np.einsum("mcn,mn->mc", st.cut_b, st.z)
    return np.where(st.cut_active, values + st.cut_c, 0.0)


def numpy_server_step(config, oracle, st: NumpyState, arrived, validation, key, train=None):
    """One iteration of ``server_step`` with Python loops over workers (``train``: the training
    batches, needed on a refresh iteration)."""
    R, M = st.p.shape[:2]
    key, k_refresh, k_reply = jax.random.split(key, 3)
    I = config.num_samples
    u_frag, u_demo = _uniforms(k_reply, R, M, st.q.shape[1], I)
    global_cuts = st.cut_c.shape[0] == 1

    # 1. accept p and the workers' e_lᵀq
    for v in range(R):
        if arrived[v]:
            if np.all(np.isfinite(st.p[v])):
                st.received[v] = st.p[v]
                st.demo_terms[v] = np.einsum("cuk,uk->c", st.cut_e[v], st.q[v])
            else:
                st.rejected += 1
    # 2. server
    lam = np.where(st.cut_active, st.cut_lambda, 0.0)
    force_z = np.einsum("c,mcn->mn", lam[0], st.cut_b) if global_cuts else np.einsum("mc,mcn->mn", lam, st.cut_b)
    agg = np.zeros_like(st.z)
    for v in range(R):
        d = st.z - st.received[v]
        agg += -st.rho[v] + config.penalty() * d + config.psi * np.sign(d)
    eta_z = config.eta_consensus()
    st.z = project(st.z - eta_z * (force_z + agg))
    values = _values(config, st)
    before = st.cut_lambda.copy()
    new = np.maximum(0.0, st.cut_lambda + config.lr_dual * (values - config.dual_reg * st.cut_lambda))
    st.cut_lambda = np.where(st.cut_active, new, 0.0)
    drop = st.cut_active & (before < config.gamma) & (st.cut_lambda < config.gamma)
    st.cut_active = st.cut_active & ~drop
    st.cut_lambda = np.where(drop, 0.0, st.cut_lambda)
    # 3. refresh
    if st.iteration % config.refresh_every == 0:
        if not global_cuts:
            raise NotImplementedError("the reference refreshes with the value-function gap only")
        st = numpy_refresh(config, oracle, st, train, k_refresh)
    # 4. replies
    lam = np.where(st.cut_active, st.cut_lambda, 0.0)
    mean_losses = np.zeros(R)
    for v in range(R):
        if not arrived[v]:
            continue
        words = draw(st.p[v], u_frag[v])
        demos = draw(st.q[v], u_demo[v])
        losses = _losses(oracle, validation, v, demos, words)
        g_p = policy_gradient(st.p[v], words, losses)
        g_q = policy_gradient(st.q[v], demos, losses)
        norm = np.sqrt((g_p**2).sum() + (g_q**2).sum())
        scale = min(1.0, config.max_norm / norm) if norm > 0 else 1.0
        g_p, g_q = g_p * scale, g_q * scale
        if global_cuts:
            g_p = g_p + np.einsum("c,mcn->mn", lam[0], st.cut_a[v])
            g_q = g_q + np.einsum("c,cuk->uk", lam[0], st.cut_e[v])
        else:
            g_p = g_p + np.einsum("mc,mcn->mn", lam, st.cut_a[v])
        st.count[v] += 1
        st.p[v], st.adam_p[v] = adam(st.p[v], g_p, st.adam_p[v], st.count[v], config.lr_fragment)
        st.q[v], st.adam_q[v] = adam(st.q[v], g_q, st.adam_q[v], st.count[v], config.lr_demos)
        mean_losses[v] = losses.mean()
    st.staleness = np.where(arrived, 0, st.staleness + 1)
    st.iteration += 1
    return st, key, mean_losses


def make_case(num_workers, *, M=75, N=100, U=2, V=50, I=20, num_validation=20, capacity=4, seed=0, num_test=200, num_train=20):
    """A planted task, an engine config (the default value-function gap) and a state with a
    populated cut buffer (positive duals, coefficients on ``p``, ``z`` and ``q``) whose next
    iteration does not refresh: the setting both the parity test and ``benchmarks/core_step.py``
    use (the parity test steps on into a refresh)."""
    import jax.numpy as jnp

    from asyndbt_jax import cuts as cutlib
    from asyndbt_jax.engine import init_state, method_config
    from asyndbt_jax.oracle import make_planted_task

    task = make_planted_task(
        jax.random.key(seed), num_workers=num_workers, num_fragment_words=M, vocab_size=N, num_classes=U,
        num_candidates=V, num_validation=num_validation, num_test=num_test, num_train=num_train,
    )
    config = method_config(
        "asyndbt", num_workers=num_workers, num_fragment_words=M, vocab_size=N, num_classes=U, num_candidates=V,
        num_active=max(1, num_workers // 2), max_staleness=4, num_samples=I, lr_fragment=0.05, lr_demos=0.05,
        refresh_every=10, psi=0.01, cut_capacity=capacity,
    )
    state = init_state(config, jax.random.key(seed + 1))
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(seed + 2), 5)

    def uniform_simplex(key, shape):
        # Normalised Exp(1) draws are Dirichlet(1); jax.random.dirichlet's gamma sampler
        # needs ~57 GiB at 100k workers.
        e = jax.random.exponential(key, shape + (N,))
        return e / e.sum(-1, keepdims=True)

    p = uniform_simplex(k1, (num_workers, M))
    q = state.workers.selection.demo_probs
    coef = (0.1 * jax.random.normal(k2, (num_workers, M, N)), 0.1 * jax.random.normal(k3, (M, N)),
            0.1 * jax.random.normal(k4, (num_workers, U, V)))
    term = jnp.sum(coef[2] * q, axis=(1, 2))
    gap = 0.01 + jax.random.uniform(k5, (num_workers,))
    cuts, _, put = cutlib.value_cut(state.server.cuts, p, state.server.consensus, coef, term, gap, config.eps())
    cuts = cuts._replace(duals=jnp.where(cuts.active, 0.3, 0.0).astype(jnp.float32))  # strong, as the step returns it
    terms = jnp.where(put[None, :], term[:, None], state.server.demo_terms)
    server = state.server._replace(cuts=cuts, received=p, demo_terms=terms, iteration=jnp.asarray(1, jnp.int32),
                                   fragment_terms=cutlib.worker_terms(cuts, p))
    return task, config, state._replace(server=server)
