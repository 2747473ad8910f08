"""AsynDBT server iterations as one jit-compiled step over a leading worker axis (docs/algorithm.md).

Asynchrony is data: every server iteration receives a boolean ``arrived [R]`` mask (the
workers whose messages reached the server), uses its stale copies for everyone else,
replies to the arrived workers, and those workers immediately compute their next update
from the reply (what a real worker would do while its message is in flight). Staleness
counters track how many server iterations each worker has gone without a reply; the
simulator (``asyndbt_jax.simulator``) chooses ``arrived`` so that none exceeds ``τ``.

One iteration (``server_step``):

1. Accept the arrived workers' fragment distributions; a message with NaN/Inf is rejected,
   counted, and never enters ``z``.
2. Server (the upper level, rules inferred from ADBO): ``z ← proj_Δ(z − η_z(Σ_l λ_l b_l + Σ_v(−ρ_v + μ(z − p_v)
   + ψ sign(z − p_v))))`` over every worker's latest copy (the default ``sign_consensus``
   aggregator; any other rule replaces each sum over workers by ``R ×`` the rule:
   :func:`consensus_step`, and :func:`worker_sum` for the cut gap and values);
   ``λ ← max(0, λ + η_λ(values − c₁λ))``;
   drop cuts whose dual stayed below ``γ``.
3. Every ``δ`` iterations: refresh the polyhedron: ``K`` primal-dual rounds with all
   workers give ``φ``; add a cut where the gap exceeds ``ε`` (the default value-function gap
   ``Σ_v g_v(p) − g_v(φ)`` on the training batches, whose cut carries the hypergradient
   ``e = ∇_q g(p) − ∇_q g(φ)`` on the demonstrations: :func:`value_cut_coefficients`).
4. Reply: every arrived worker samples ``I`` configurations from its ``(p, q)``, scores them
   on its validation batch, estimates both gradients from the same queries, adds the cut
   forces ``Σ_l λ_l a_l^(v)`` and ``Σ_l λ_l e_l^(v)``, and takes a projected Adam step.

The baselines are presets of the same step (``method_config``): ``sync`` (S = R),
``cendbt`` (one worker holding all data, no consensus), ``bdpl`` (fragment only, no
demonstrations, no lower level), ``demos-only``, and ``fedone`` (FedAvg of BDPL updates).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import aggregators as agglib
from . import attacks as attacklib
from . import cuts as cutlib
from ._checks import per_worker
from .estimators import selection_gradient
from .feedback import Feedback, FeedbackFn
from .lower_level import LowerLevelState, PrimalDualHyperparams, primal_dual_round, primal_dual_rounds, server_consensus_step
from .optim import simplex_adam
from .simplex import project_simplex
from .selection import Configuration, SelectionVariables, decode, init_selection, sample_configurations

METHODS = ("asyndbt", "sync", "cendbt", "bdpl", "demos-only", "fedone", "joint")
CENTRALISED = ("cendbt", "bdpl", "demos-only")  # one machine holding all data
SERVER_RULES = ("primal_dual", "fedavg")
AGGREGATORS = ("sign_consensus",) + tuple(agglib.RULES)
# Bucketing needs a fresh random partition per aggregation; the server step's rules take none.
ENGINE_PRE_AGGREGATIONS = ("none", "nnm")
GAPS = ("value",) + cutlib.NORMS  # the value-function gap, or an argument-space gap per fragment row
VALUE_EPSILON = 0.01  # ε per worker of the value-function gap (nats of training loss)


class AsynDBTConfig(NamedTuple):
    """Static hyper-parameters (hashable: the jitted step specialises on them).

    Paper values where it gives them (Adam lr 1e-4 for p and q, dual lr 0.1); the rest
    are our choices, documented in docs/algorithm.md.
    """

    num_workers: int
    num_fragment_words: int
    vocab_size: int
    num_classes: int
    num_candidates: int
    num_active: int  # S
    max_staleness: int  # τ
    num_samples: int = 20  # I
    lr_fragment: float = 1e-4
    lr_demos: float = 1e-4
    max_norm: float = 3.0
    lr_dual: float = 0.1  # η_λ
    dual_reg: float = 0.1  # c₁
    lower_rounds: int = 3  # K
    lower_lr: float = 0.05  # η_p of the lower level
    lr_consensus: float | None = None  # η_z; None: 1/(R·μ), or 1/(R·N·ψ) when μ = 0 (the ℓ1 consensus)
    lr_rho: float | None = None  # η_ρ; None: 0 for sign_consensus (no duals: the ℓ1 term is exact), else 0.1
    mu: float | None = None  # None: 0 for sign_consensus (the ℓ1 term carries the consensus), else 1.0
    psi: float = 1e-3
    epsilon: float | None = None  # ε; None: value_epsilon·R for the value gap, 0.05·(R + 1) for the argument-space gaps
    gamma: float = 1e-3
    refresh_every: int = 10  # δ
    cut_capacity: int = 4
    gap_norm: str = "value"  # the value-function gap (cuts on q too: the hypergradient), or "l2sq"/"l1" (docs/algorithm.md)
    estimator: str = "exact"
    use_fragment: bool = True
    use_demos: bool = True
    bilevel: bool = True
    server_rule: str = "primal_dual"
    aggregator: str = "sign_consensus"  # the paper's z step; or any rule in aggregators.RULES
    pre_aggregation: str = "none"  # before a robust rule: "nnm" (nearest-neighbour mixing, f = num_malicious) or "none"
    trim_fraction: float = 0.3  # trimmed_mean
    clip_radius: float | None = None  # centered_clipping; None: adaptive (the median distance to the centre)
    num_malicious: int = 0  # B: the last B workers are malicious (simulation only)
    attack: str = "none"  # attacks.ATTACKS
    attack_strength: float | None = None  # the message attack's parameter (ATTACK_STRENGTH); None: its default

    def penalty(self) -> float:
        """μ: the quadratic consensus penalty (default 0 for ``sign_consensus``, 1 otherwise)."""
        if self.mu is not None:
            return self.mu
        return 0.0 if self.aggregator == "sign_consensus" else 1.0

    def dual_rate(self) -> float:
        """η_ρ: the consensus duals' step (default 0 for ``sign_consensus``, 0.1 otherwise)."""
        if self.lr_rho is not None:
            return self.lr_rho
        return 0.0 if self.aggregator == "sign_consensus" else 0.1

    def eta_consensus(self) -> float:
        """η_z: ``1/(R·μ)`` moves ``z`` to the penalised mean in one step; with ``μ = 0`` the ψ-sign
        terms alone move ``z``, ``1/(R·N·ψ)`` letting all ``R`` signs together move a coordinate
        by ``1/N`` (the scale of a uniform row of the simplex)."""
        if self.lr_consensus is not None:
            return self.lr_consensus
        if self.penalty() > 0:
            return 1.0 / (self.num_workers * self.penalty())
        return 1.0 / (self.num_workers * self.vocab_size * self.psi) if self.psi > 0 else 0.0

    def eps(self) -> float:
        if self.epsilon is not None:
            return self.epsilon
        if self.gap_norm == "value":
            return VALUE_EPSILON * self.num_workers  # nats of training loss per worker
        return 0.05 * (self.num_workers + 1)

    def validate(self) -> "AsynDBTConfig":
        """Raise ``ValueError`` on any inconsistent setting (before anything compiles)."""
        positive_ints = {
            "num_workers": self.num_workers,
            "vocab_size": self.vocab_size,
            "num_candidates": self.num_candidates,
            "lower_rounds (K)": self.lower_rounds,
            "cut_capacity": self.cut_capacity,
            "refresh_every (δ)": self.refresh_every,
            "max_staleness (τ)": self.max_staleness,
            "num_active (S)": self.num_active,
        }
        for name, value in positive_ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_active > self.num_workers:
            raise ValueError(f"num_active (S={self.num_active}) cannot exceed num_workers (R={self.num_workers})")
        if not isinstance(self.num_samples, int) or self.num_samples < 2:
            raise ValueError(f"num_samples (I) must be an integer >= 2, got {self.num_samples!r}")
        for name in ("num_fragment_words", "num_classes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("lr_fragment", "lr_demos", "lr_dual", "lower_lr", "max_norm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")
        for name in ("dual_reg", "mu", "psi", "gamma", "lr_rho"):
            value = getattr(self, name)
            if value is None and name in ("mu", "lr_rho"):
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr_consensus is not None and not (math.isfinite(self.lr_consensus) and self.lr_consensus >= 0):
            raise ValueError(f"lr_consensus must be finite and >= 0, got {self.lr_consensus!r}")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon (ε) must be a finite positive number, got {self.epsilon!r}")
        if self.gap_norm not in GAPS:
            raise ValueError(f"gap_norm must be one of {GAPS}, got {self.gap_norm!r}")
        if self.estimator not in ("exact", "negative"):
            raise ValueError(f"estimator must be 'exact' or 'negative', got {self.estimator!r}")
        if self.server_rule not in SERVER_RULES:
            raise ValueError(f"server_rule must be one of {SERVER_RULES}, got {self.server_rule!r}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
        if self.attack not in attacklib.ATTACKS:
            raise ValueError(f"attack must be one of {attacklib.ATTACKS}, got {self.attack!r}")
        if self.attack_strength is not None and not (
            isinstance(self.attack_strength, (int, float)) and math.isfinite(self.attack_strength) and self.attack_strength > 0
        ):
            raise ValueError(f"attack_strength must be a finite positive number or None, got {self.attack_strength!r}")
        if self.attack_strength is not None and self.attack not in attacklib.ATTACK_STRENGTH:
            raise ValueError(
                f"attack_strength applies to {sorted(attacklib.ATTACK_STRENGTH)}, not to attack={self.attack!r}"
            )
        if not (isinstance(self.num_malicious, int) and 0 <= self.num_malicious <= self.num_workers):
            raise ValueError(f"num_malicious must be an integer in [0, R={self.num_workers}], got {self.num_malicious!r}")
        if self.aggregator != "mean" and 2 * self.num_malicious >= self.num_workers:
            # every robust rule (the ψ-sign rule's median included) needs an honest majority
            raise ValueError(f"{self.aggregator} needs num_malicious < R/2, got {self.num_malicious} of {self.num_workers}")
        if self.aggregator == "trimmed_mean" and self.num_malicious > math.floor(self.trim_fraction * self.num_workers):
            raise ValueError(
                f"trimmed_mean drops floor(trim_fraction·R) = {math.floor(self.trim_fraction * self.num_workers)} values at "
                f"each end, fewer than num_malicious = {self.num_malicious}: raise trim_fraction"
            )
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}")
        if self.clip_radius is not None and not (math.isfinite(self.clip_radius) and self.clip_radius > 0):
            raise ValueError(f"clip_radius must be a finite positive number or None (adaptive), got {self.clip_radius!r}")
        if self.pre_aggregation not in ENGINE_PRE_AGGREGATIONS:
            raise ValueError(f"pre_aggregation must be one of {ENGINE_PRE_AGGREGATIONS}, got {self.pre_aggregation!r}")
        if self.pre_aggregation != "none" and self.aggregator in ("mean", "sign_consensus"):
            raise ValueError(f"pre_aggregation={self.pre_aggregation!r} goes before a robust rule, not {self.aggregator!r}")
        if not (self.use_fragment or self.use_demos):
            raise ValueError("at least one of use_fragment and use_demos must be True")
        return self


class WorkerState(NamedTuple):
    """Every worker's private variables (leading axis R)."""

    selection: SelectionVariables
    opt_state: Any


class ServerState(NamedTuple):
    """The server's variables. ``fragment_terms`` is ``cuts.worker_terms(cuts, received)``,
    kept up to date by every step that writes ``received`` or a cut (a state built by hand
    must set it so)."""

    consensus: jax.Array  # z [M, N]
    duals: jax.Array  # ρ [R, M, N]
    cuts: cutlib.CutBuffer
    received: jax.Array  # latest p received from every worker [R, M, N]
    demo_terms: jax.Array  # latest e_l^(v)ᵀ q^(v) received from every worker [R, C] (the cuts' q part)
    fragment_terms: jax.Array  # a_l^(v)ᵀ p^(v) of every worker's latest received p [R, H, C] (cuts.worker_terms)
    staleness: jax.Array  # int32 [R]: server iterations since the worker's last reply
    iteration: jax.Array  # int32
    rejected: jax.Array  # int32: messages rejected for NaN/Inf


class EngineState(NamedTuple):
    """Everything one run carries. ``malicious [R]`` marks the workers that attack
    (simulation only; ``init_state`` marks the last ``num_malicious``; a batch of runs may
    mark fewer, ``num_malicious`` then being the bound Krum assumes)."""

    workers: WorkerState
    server: ServerState
    key: jax.Array
    malicious: jax.Array


class StepMetrics(NamedTuple):
    num_arrived: jax.Array
    num_rejected: jax.Array
    max_staleness: jax.Array
    mean_loss: jax.Array  # mean validation loss of the replied workers' sampled configurations
    queries: jax.Array  # black-box queries made in this iteration
    refreshed: jax.Array
    active_cuts: jax.Array
    added_cuts: jax.Array  # cuts the refresh of this iteration added (0 without one)
    lower_gap: jax.Array  # the gap h the refresh measured (the largest row's for an argument-space gap; NaN without one)


class Data(NamedTuple):
    """Per-worker query batches (pytrees with leading axes ``[R, B]``)."""

    train: Any
    validation: Any


#: The hyper-parameters the compiled step takes as traced values: changing one between
#: calls reuses the compiled step. Every other field (shapes, method switches, the gap, the
#: aggregator and its options, the attack) is static: the step specialises on it.
TRACED_HYPERPARAMETERS = ("lr_fragment", "lr_demos", "max_norm", "lr_dual", "dual_reg", "lower_lr", "lr_consensus",
                          "lr_rho", "mu", "psi", "epsilon", "gamma")


def split_config(config: AsynDBTConfig) -> tuple[AsynDBTConfig, dict]:
    """``(static, hyper)``: ``config`` with every traced hyper-parameter blanked (the hashable
    part a compiled step specialises on) and those hyper-parameters as float32 scalars, the
    derived defaults resolved (``η_z = 1/(Rμ)``, ``ε``). ``static._replace(**hyper)`` inside
    a trace is a config whose hyper-parameters are traced."""
    resolved = config._replace(lr_consensus=config.eta_consensus(), epsilon=config.eps(), mu=config.penalty(),
                               lr_rho=config.dual_rate())
    hyper = {name: jnp.asarray(getattr(resolved, name), jnp.float32) for name in TRACED_HYPERPARAMETERS}
    return config._replace(**{name: None for name in TRACED_HYPERPARAMETERS}), hyper


def jit_config(fn: Callable | None = None, *, static_argnums: tuple[int, ...] = (0,),
               donate_argnums: tuple[int, ...] = ()):
    """``jax.jit`` for a function whose first argument is an :class:`AsynDBTConfig`: the
    config's shapes and switches are static, its hyper-parameters
    (:data:`TRACED_HYPERPARAMETERS`) are traced, so a sweep over learning rates, ψ, μ, ε …
    compiles once. ``static_argnums``/``donate_argnums`` index ``fn``'s own arguments (0 is
    the config, always static). The compiled function is ``wrapped.compiled`` (its
    ``_cache_size()`` counts compilations)."""
    if fn is None:
        return functools.partial(jit_config, static_argnums=static_argnums, donate_argnums=donate_argnums)
    static = (0,) + tuple(i + 1 for i in static_argnums if i != 0)

    def inner(static_config, hyper, *args):
        return fn(static_config._replace(**hyper), *args)

    compiled = jax.jit(inner, static_argnums=static, donate_argnums=tuple(i + 1 for i in donate_argnums))

    @functools.wraps(fn)
    def wrapped(config: AsynDBTConfig, *args):
        static_config, hyper = split_config(config)
        return compiled(static_config, hyper, *args)

    wrapped.compiled = compiled
    return wrapped


def method_config(method: str, **kwargs) -> AsynDBTConfig:
    """The preset of ``AsynDBTConfig`` for a named method (kwargs override).

    ``asyndbt``: S of R workers, staleness bound τ. ``sync``: S = R (waits for all).
    ``cendbt``: the bilevel method on one machine (pass ``num_workers=1`` and pooled data;
    no consensus forces). ``bdpl``: fragment only, no lower level, no demonstrations.
    ``demos-only``: demonstrations only. ``fedone``: synchronous FedAvg of BDPL updates
    (fragment only; the server averages the received fragments and broadcasts them).
    ``joint``: the single-level ablation: AsynDBT's workers and server (S of R, the
    consensus step) with no lower level and no cuts, one joint policy gradient over both
    variables on every labelled query a worker holds (train and validation together: see
    :func:`method_data`).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    presets = {
        "asyndbt": {},
        "sync": {"num_active": kwargs.get("num_workers", 1)},
        "cendbt": {"mu": 0.0, "psi": 0.0, "lr_consensus": 0.0, "lr_rho": 0.0},  # no z, no ρ
        "bdpl": {"use_demos": False, "bilevel": False},
        "demos-only": {"use_fragment": False, "bilevel": False},
        "fedone": {"use_demos": False, "bilevel": False, "server_rule": "fedavg"},
        "joint": {"bilevel": False},
    }
    return AsynDBTConfig(**{**kwargs, **presets[method]}).validate()


def method_data(method: str, data: "Data") -> "Data":
    """The query batches ``method`` trains on: ``data`` itself, except for ``joint``, whose
    one estimate sees the training and validation queries together (leaves ``[R, B_train +
    B_validation]`` as its validation batch; the training batch is unused without a lower level)."""
    if method != "joint":
        return data
    both = jax.tree.map(lambda t, v: jnp.concatenate([t, v], axis=1), data.train, data.validation)
    return Data(data.train, both)


def _optimizer(config: AsynDBTConfig) -> optax.GradientTransformation:
    # Each level takes its own projected Adam step (its own learning rate). The black-box
    # estimate is clipped before the deterministic cut force is added (``worker_reply``), so
    # the optimizer itself does not clip.
    return optax.multi_transform(
        {"fragment_probs": simplex_adam(config.lr_fragment, max_norm=math.inf),
         "demo_probs": simplex_adam(config.lr_demos, max_norm=math.inf)},
        SelectionVariables("fragment_probs", "demo_probs"),
    )


def malicious_mask(config: AsynDBTConfig):
    """Concrete bool ``[R]``: the last ``num_malicious`` workers are malicious (simulation only)."""
    return attacklib.malicious_workers(config.num_workers, config.num_malicious)


def _scored_losses(config: AsynDBTConfig, feedback_fn, sampled, queries, key, malicious, active=None) -> jax.Array:
    """Mean loss ``[R, I]`` of every sampled configuration, poisoned by malicious workers when
    the attack is a feedback attack. ``active``: the workers whose losses are used (the
    backend may skip the others)."""
    feedback = feedback_fn(sampled, queries) if active is None else feedback_fn(sampled, queries, active)
    if config.attack in attacklib.FEEDBACK_ATTACKS and config.num_malicious:
        mode = "invert" if config.attack == "inverted_feedback" else "random"
        feedback = attacklib.poison_feedback(feedback, malicious, key, mode=mode)
    return jnp.mean(feedback.losses, axis=-1)


def _sent_messages(config: AsynDBTConfig, fragment_probs, consensus, key, malicious):
    """What every worker sends: its ``p``, or for malicious workers under a message attack
    ``z + attack(p − z)`` (the attacks act on displacements from the consensus)."""
    if config.attack == "none" or config.attack not in attacklib.MESSAGE_ATTACKS or not config.num_malicious:
        return fragment_probs
    delta = fragment_probs - consensus[None]
    replay = jnp.full_like(fragment_probs, 1.0 / config.vocab_size) - consensus[None]  # the initial broadcast, replayed
    options = {} if config.attack_strength is None else {attacklib.ATTACK_STRENGTH[config.attack]: config.attack_strength}
    return consensus[None] + attacklib.apply(config.attack, delta, malicious, key, replay=replay, **options)


def _poisoned_data(config: AsynDBTConfig, data: "Data", malicious) -> "Data":
    if config.attack not in attacklib.DATA_ATTACKS or not config.num_malicious:
        return data
    return Data(attacklib.poison_demonstrations(data.train, malicious), attacklib.poison_demonstrations(data.validation, malicious))


def _rule(config: AsynDBTConfig):
    """The configured rule (not ``sign_consensus``) as ``terms [R, ...] -> aggregate`` over every worker."""
    name = config.aggregator
    options = {
        "trimmed_mean": {"trim_fraction": config.trim_fraction},
        "krum": {"num_byzantine": config.num_malicious},
        "multi_krum": {"num_byzantine": config.num_malicious},
        "centered_clipping": {"radius": config.clip_radius},
    }.get(name, {})
    rule = agglib.RULES[name]
    everyone = jnp.ones((config.num_workers,), bool)
    if config.pre_aggregation == "nnm":
        return lambda terms: rule(agglib.nearest_neighbor_mixing(terms, everyone, num_byzantine=config.num_malicious), everyone, **options)
    return lambda terms: rule(terms, everyone, **options)


def worker_sum(config: AsynDBTConfig):
    """How the server combines per-worker terms that the paper sums (the cut gap and cut
    values): the plain sum for ``mean``; for the paper's ``sign_consensus`` ``R ×`` the
    coordinate-wise median, the point its ψ-sign terms settle at (so the ℓ1 rule guards the
    cuts as it guards ``z``); else ``R ×`` the configured robust rule, so one worker cannot
    inflate a cut's gap or dual. Returns ``terms [R, ...] -> [...]``."""
    if config.aggregator == "mean":
        return lambda terms: jnp.sum(terms, axis=0)
    if config.aggregator == "sign_consensus":
        everyone = jnp.ones((config.num_workers,), bool)
        return lambda terms: config.num_workers * agglib.coordinate_median(terms, everyone)
    rule = _rule(config)
    return lambda terms: config.num_workers * rule(terms)


def consensus_step(config: AsynDBTConfig):
    """The server's ``z`` step with the configured aggregator (paper Eq. 10 and the upper level's z step):
    ``(z, p [R, M, N], ρ, mask, hp, extra_force) -> z``.

    ``sign_consensus`` is the paper's step (:func:`~asyndbt_jax.lower_level.server_consensus_step`).
    Any other rule replaces the paper's sum over workers by ``R ×`` the rule:
    ``z ← proj_Δ(z + η_z R · rule_v(ρ_v + μ(p_v − z)) − η_z F)``, so ``mean`` is the paper's
    step with ``ψ = 0`` exactly.
    """
    if config.aggregator == "sign_consensus":
        return server_consensus_step
    rule = _rule(config)

    def step(consensus, fragment_probs, duals, mask, hp: PrimalDualHyperparams, extra_force=0.0):
        del mask  # every worker's latest copy counts (the server holds one for each)
        pull = rule(duals + hp.mu * (fragment_probs - consensus[None]))
        return project_simplex(consensus + hp.eta_z * (config.num_workers * pull - extra_force))

    return step


def _clip_per_worker(grads: SelectionVariables, max_norm: float) -> SelectionVariables:
    """BDPL's clip of one worker's black-box estimate (both levels jointly) to ``max_norm``."""
    clip = optax.clip_by_global_norm(max_norm)
    return jax.vmap(lambda g: clip.update(g, clip.init(g))[0])(grads)


def init_state(config: AsynDBTConfig, key: jax.Array) -> EngineState:
    """Uniform selection variables for every worker, empty cuts, ``z`` uniform, ``ρ = 0``."""
    config.validate()
    R, M, N = config.num_workers, config.num_fragment_words, config.vocab_size
    selection = init_selection(M, N, config.num_classes, config.num_candidates, batch_shape=(R,))
    opt = _optimizer(config)
    workers = WorkerState(selection, jax.vmap(opt.init)(selection))
    server = ServerState(
        consensus=jnp.full((M, N), 1.0 / N, jnp.float32),  # not weak-typed: the step returns it strong
        duals=jnp.zeros((R, M, N)),
        cuts=cutlib.init_cuts(
            M, config.cut_capacity, R, N, demo_shape=(config.num_classes, config.num_candidates), per_row=config.gap_norm != "value"
        ),
        received=jnp.copy(selection.fragment_probs),  # its own buffer: the state is donated
        demo_terms=jnp.zeros((R, config.cut_capacity)),
        fragment_terms=jnp.zeros((R, 1 if config.gap_norm == "value" else M, config.cut_capacity)),  # no cut yet
        staleness=jnp.zeros((R,), jnp.int32),
        iteration=jnp.zeros((), jnp.int32),
        rejected=jnp.zeros((), jnp.int32),
    )
    return EngineState(workers, server, key, jnp.asarray(malicious_mask(config)))


def _scored_config(config: AsynDBTConfig, selection: SelectionVariables, key, rows=None) -> Configuration:
    # every worker draws from its own stream (fold_in(key, worker)): the same draws whether
    # the batch holds all R workers, the arrived ones gathered, or one worker process
    workers = jnp.arange(config.num_workers) if rows is None else rows
    sampled = sample_configurations(key, selection, config.num_samples, workers=workers)
    if not config.use_fragment:
        sampled = sampled._replace(fragment_words=jnp.full_like(sampled.fragment_words, -1))
    if not config.use_demos:
        sampled = sampled._replace(demos=jnp.full_like(sampled.demos, -1))
    return sampled


def _masked_gradient(config: AsynDBTConfig, selection, sampled, losses) -> SelectionVariables:
    grads = selection_gradient(selection, sampled, losses, variant=config.estimator)
    return SelectionVariables(
        grads.fragment_probs if config.use_fragment else jnp.zeros_like(grads.fragment_probs),
        grads.demo_probs if config.use_demos else jnp.zeros_like(grads.demo_probs),
    )


def gather_cuts(cuts: cutlib.CutBuffer, rows) -> cutlib.CutBuffer:
    """The cut buffer restricted to workers ``rows`` (their coefficients on ``p`` and ``q``)."""
    return cuts._replace(worker_coef=tuple(a[rows] for a in cuts.worker_coef),
                         demo_coef=tuple(e[rows] for e in cuts.demo_coef))


def reply_arrived(config: AsynDBTConfig, feedback_fn: FeedbackFn, workers: WorkerState, cuts: cutlib.CutBuffer,
                  arrived, queries, key, malicious):
    """:func:`worker_reply` for the arrived workers only, at a cost in proportion to them.

    With ``S = num_active < R`` the arrived workers are gathered ``S`` at a time (a static
    shape) and their new state is scattered back; an iteration where more than ``S`` arrive
    (the broadcast at iteration 0, workers forced by the staleness bound) takes more
    chunks. Every worker draws from its own random stream, so the result equals the dense
    step over all ``R`` workers masked by ``arrived`` (``S = R`` runs that dense step).

    Returns:
      ``(new_workers, mean_loss [R])`` (0 for workers that did not arrive).
    """
    R, S = config.num_workers, config.num_active
    if S >= R:
        return worker_reply(config, feedback_fn, workers, cut_forces(config, cuts), arrived, queries, key, malicious)

    def chunk(index, rows, carry):
        workers, losses = carry
        take = lambda x: x[rows]  # noqa: E731
        sub = jax.tree.map(take, workers)
        force = cut_forces(config, gather_cuts(cuts, rows))
        new, loss = worker_reply(config, feedback_fn, sub, force, index < R, jax.tree.map(take, queries), key,
                                 malicious[rows], rows)
        put = lambda full, part: full.at[index].set(part, mode="drop")  # noqa: E731
        return jax.tree.map(put, workers, new), put(losses, loss)

    return over_arrived(arrived, S, chunk, (workers, jnp.zeros((R,), jnp.float32)))


def over_arrived(arrived, S: int, body, init):
    """Run ``body(index [S], rows [S], carry) -> carry`` over the arrived workers, ``S`` at a
    time (a static shape), as many chunks as arrived: ``index`` holds the workers' ids and
    ``R`` for padding (a scatter with ``mode="drop"`` skips it), ``rows`` a real row to read
    in its place. The cost follows the arrivals, not ``R``."""
    R = arrived.shape[0]
    order = jnp.nonzero(arrived, size=-(-R // S) * S, fill_value=R)[0]  # arrived workers first, then R (padding)
    count = jnp.sum(arrived.astype(jnp.int32))

    def chunk(k, carry):
        index = jax.lax.dynamic_slice(order, (k * S,), (S,))
        return body(index, jnp.minimum(index, R - 1), carry)

    return jax.lax.fori_loop(0, (count + S - 1) // S, chunk, init)


def worker_reply(config, feedback_fn: FeedbackFn, workers: WorkerState, force, replied, queries, key, malicious, rows=None):
    """Every replied worker computes its next upper-level update (worker side).

    Samples ``I`` configurations, scores them on ``queries`` (validation batch), estimates
    the fragment and demonstration gradients from the same losses, adds the cut forces
    ``force`` (``SelectionVariables``: ``Σ_l λ_l a_l^(v)`` on ``p``, ``Σ_l λ_l e_l^(v)`` on ``q``;
    ``0.0`` for none) and takes the projected Adam step. Workers not replied keep their state.

    Args:
      rows: int ``[G]``: the arrays hold only workers ``rows`` of the ``R`` (leading axis
        ``G``): the arrived workers gathered (:func:`reply_arrived`) or a worker process of
        the real runtime; they draw exactly what those rows draw in the dense step.
        ``None``: all ``R`` workers.

    Returns:
      ``(new_workers, mean_loss [R])``.
    """
    k_poison = jax.random.fold_in(key, 1)  # a separate stream: attack-free runs are unchanged
    sampled = _scored_config(config, workers.selection, key, rows)
    losses = _scored_losses(config, feedback_fn, sampled, queries, k_poison, malicious, replied)  # [R, I]
    grads = _clip_per_worker(_masked_gradient(config, workers.selection, sampled, losses), config.max_norm)
    grads = jax.tree.map(jnp.add, grads, force) if isinstance(force, SelectionVariables) else grads
    opt = _optimizer(config)
    updates, opt_state = jax.vmap(opt.update)(grads, workers.opt_state, workers.selection)
    selection = optax.apply_updates(workers.selection, updates)

    def pick(new, old):
        return jnp.where(per_worker(replied, new), new, old)

    new_workers = WorkerState(jax.tree.map(pick, selection, workers.selection), jax.tree.map(pick, opt_state, workers.opt_state))
    return new_workers, jnp.mean(losses, axis=-1)


class LowerEvaluation(NamedTuple):
    """The workers' estimates of their training loss at ``(p, q)`` from one batch of queries:
    ``grads`` (``SelectionVariables`` ``[R, ...]``), the mean ``loss [R]`` and ``demo_dot =
    q^(v)ᵀ ∇̂_q g_v [R]`` (what a worker reports of ``q``)."""

    grads: SelectionVariables
    loss: jax.Array
    demo_dot: jax.Array


def lower_evaluation(config, feedback_fn, demo_probs, fragment_probs, train_queries, key, malicious, rows=None) -> LowerEvaluation:
    """The workers' black-box estimates of the training loss at ``(p, q)``
    (:class:`LowerEvaluation`), from one batch of queries on their own training batches.

    ``rows``: as in :func:`worker_reply` (a subset of the workers, drawing what they draw
    in the batched refresh)."""
    selection = SelectionVariables(fragment_probs, demo_probs)
    k_poison = jax.random.fold_in(key, 1)
    sampled = _scored_config(config, selection, key, rows)
    losses = _scored_losses(config, feedback_fn, sampled, train_queries, k_poison, malicious)
    grads = _masked_gradient(config, selection, sampled, losses)
    return LowerEvaluation(grads, jnp.mean(losses, axis=-1), jnp.sum(grads.demo_probs * demo_probs, axis=(-2, -1)))


def lower_gradient(config, feedback_fn, demo_probs, fragment_probs, train_queries, key, malicious, rows=None):
    """The workers' black-box gradient ``∇̂g`` of the training loss at ``fragment_probs``
    (one primal-dual round's worker side): :func:`lower_evaluation`'s fragment part."""
    return lower_evaluation(config, feedback_fn, demo_probs, fragment_probs, train_queries, key, malicious, rows).grads.fragment_probs


def _lower_level_gradient(config, feedback_fn, demo_probs, train_queries, malicious):
    return lambda key, fragment_probs: lower_gradient(config, feedback_fn, demo_probs, fragment_probs, train_queries, key, malicious)


def _primal_dual_hp(config: AsynDBTConfig) -> PrimalDualHyperparams:
    return PrimalDualHyperparams(config.lower_lr, config.eta_consensus(), config.dual_rate(), config.penalty(), config.psi)


def _refresh(config, feedback_fn, server: ServerState, demo_probs, train_queries, key, malicious):
    """Recompute φ with K primal-dual rounds of all workers and add cuts where h > ε.

    With the value-function gap the first round's estimates at the current point and one
    more evaluation at ``φ`` (the same key: common random numbers) give the gap and the
    cut's coefficients (:func:`value_cut_coefficients`); ``K + 1`` evaluations in all."""
    hp = _primal_dual_hp(config)
    start = refresh_start(server)
    everyone = jnp.ones((config.num_workers,), bool)
    grad_fn = _lower_level_gradient(config, feedback_fn, demo_probs, train_queries, malicious)
    if config.gap_norm != "value":
        phi = primal_dual_rounds(start, grad_fn, key, config.lower_rounds, everyone, hp, consensus_step(config))
        return refresh_cuts(config, server, phi), jnp.max(argument_gap(config, server, phi))
    k_first, k_rest = jax.random.split(key)
    at_point = lower_evaluation(config, feedback_fn, demo_probs, start.fragment_probs, train_queries, k_first, malicious)
    phi = refresh_round(config, start, at_point.grads.fragment_probs, everyone)
    if config.lower_rounds > 1:
        phi = primal_dual_rounds(phi, grad_fn, k_rest, config.lower_rounds - 1, everyone, hp, consensus_step(config))
    at_phi = lower_evaluation(config, feedback_fn, demo_probs, phi.fragment_probs, train_queries, k_first, malicious)
    return refresh_value_cuts(config, server, start, phi, at_point, at_phi)


def value_cut_coefficients(config: AsynDBTConfig, start: LowerLevelState, at_point, at_phi):
    """The value-function gap of the lower level and its gradient at the current point.

    The gap is the training loss the lower level would still remove,

        h = Σ_v [ g_v(p^(v); q^(v)) − g_v(φ^(v); q^(v)) ]

    (``≥ 0`` up to noise when ``φ`` improves on the point), and by Danskin's theorem (``φ``
    approximately minimises the lower level's objective given ``q``) its gradient is

        a^(v) = ∇_p g_v(p^(v); q^(v)),    b = 0,
        e^(v) = ∇_q g_v(p^(v); q^(v)) − ∇_q g_v(φ^(v); q^(v))          (the hypergradient part)

    The consensus constraint ``p^(v) = z`` is not in the gap: ``ρ`` and the ``μ``, ``ψ`` terms of
    the ``z`` and primal steps carry it (measured: a gap over the augmented Lagrangian, whose
    penalty terms make the cuts pull ``p`` toward ``z`` again, scored 1–2 points lower for the
    distributed methods; docs/algorithm.md).

    Args:
      start: the point ``(p, z, ρ)``.
      at_point, at_phi: :class:`LowerEvaluation` at ``p`` and at the lower-level estimate ``φ``'s ``p``.

    Returns:
      ``((a [R, M, N], b [M, N], e [R, U, V]), h_v [R], e^(v)ᵀq^(v) [R])``.
    """
    a = at_point.grads.fragment_probs
    b = jnp.zeros_like(start.consensus)
    e = at_point.grads.demo_probs - at_phi.grads.demo_probs
    return (a, b, e), at_point.loss - at_phi.loss, at_point.demo_dot - at_phi.demo_dot


def refresh_value_cuts(config: AsynDBTConfig, server: ServerState, start, phi, at_point, at_phi):
    """Add a value-function cut where the gap exceeds ``ε`` (:func:`value_cut_coefficients`);
    keep ``φ``'s duals. Every worker takes part in a refresh and so reports the new cut's
    term ``e^(v)ᵀ q^(v)``. Returns ``(server, h)``."""
    coef, gap, term = value_cut_coefficients(config, start, at_point, at_phi)
    cuts, h, put = cutlib.value_cut(
        server.cuts, start.fragment_probs, start.consensus, coef, term, gap, config.eps(), combine=worker_sum(config)
    )
    new = server._replace(cuts=cuts, duals=phi.duals, demo_terms=jnp.where(put[None, :], term[:, None], server.demo_terms),
                          fragment_terms=cutlib.worker_terms(cuts, server.received))
    return new, h


def argument_gap(config: AsynDBTConfig, server: ServerState, phi: LowerLevelState) -> jax.Array:
    """The argument-space gap ``h_i [M]`` of every fragment row between the server's point and ``φ``."""
    return cutlib.gap(server.received, server.consensus, phi.fragment_probs, phi.consensus, config.gap_norm, worker_sum(config))


def refresh_start(server: ServerState) -> LowerLevelState:
    """Where a refresh's primal-dual rounds start: every worker's latest ``p``, ``z``, ``ρ``."""
    return LowerLevelState(server.received, server.consensus, server.duals)


def refresh_round(config: AsynDBTConfig, lower: LowerLevelState, grad, mask) -> LowerLevelState:
    """One primal-dual round of a refresh given the workers' gradients ``grad [R, M, N]``
    (the lower level's server-side math; the real runtime gathers ``grad`` from its workers)."""
    return primal_dual_round(lower, grad, mask, _primal_dual_hp(config), consensus_step(config))


def refresh_cuts(config: AsynDBTConfig, server: ServerState, phi: LowerLevelState) -> ServerState:
    """Add a cut where the gap to the lower-level estimate ``φ`` exceeds ``ε``; keep ``φ``'s duals."""
    new_cuts, _ = cutlib.add_cuts(
        server.cuts,
        server.received,
        server.consensus,
        phi.fragment_probs,
        phi.consensus,
        config.eps(),
        config.gap_norm,
        combine=worker_sum(config),
    )
    return server._replace(cuts=new_cuts, duals=phi.duals, fragment_terms=cutlib.worker_terms(new_cuts, server.received))


def server_receive(config: AsynDBTConfig, server: ServerState, p, arrived, demo_terms=None) -> tuple[ServerState, jax.Array]:
    """Steps 1–2 of a server iteration: accept the arrived messages ``p [R, M, N]`` and
    ``demo_terms [R, C]`` (every worker's ``e_l^(v)ᵀ q^(v)``; ``None``: keep the latest; a
    non-finite message is rejected and counted), then the server's ``z`` and cut-dual ``λ``
    updates over every worker's latest copy (the upper level's server side).

    Only the arrived rows of ``p`` are read (``S = num_active`` at a time, as
    :func:`reply_arrived`): the server keeps every worker's cut terms ``a_l^(v)ᵀ p^(v)``
    (``fragment_terms``) beside its latest ``p``, so the λ step costs ``R · C`` scalars and the
    ``z`` step is the only pass over the ``R`` stored messages.

    Returns:
      ``(server, num_rejected)``; ``staleness`` and ``iteration`` are left to the caller.
    """
    R = config.num_workers
    received, fragment_terms, finite = _accept(config, server, p, arrived)
    accepted = arrived & finite
    num_rejected = jnp.sum(arrived & ~finite)
    terms = server.demo_terms if demo_terms is None else jnp.where(accepted[:, None], demo_terms, server.demo_terms)
    z = server.consensus
    if config.use_fragment and config.server_rule == "fedavg":
        weight = accepted.astype(z.dtype)[:, None, None]
        mean = jnp.sum(weight * received, 0) / jnp.maximum(jnp.sum(accepted), 1)
        z = jnp.where(jnp.any(accepted), mean, z)
        cuts = server.cuts
    elif config.use_fragment:
        cut_force_z = cutlib.cut_force(server.cuts).consensus
        everyone = jnp.ones((R,), bool)  # every worker's latest copy counts
        z = consensus_step(config)(z, received, server.duals, everyone, _primal_dual_hp(config), cut_force_z)
        before = server.cuts.duals
        cuts = cutlib.dual_ascent(server.cuts, None, z, config.lr_dual, config.dual_reg, combine=worker_sum(config),
                                  demo_terms=terms, terms=fragment_terms)
        cuts = cutlib.drop_cuts(cuts, before, config.gamma)
    else:
        cuts = server.cuts
    return server._replace(consensus=z, cuts=cuts, received=received, demo_terms=terms,
                           fragment_terms=fragment_terms), num_rejected


def _accept(config: AsynDBTConfig, server: ServerState, p, arrived):
    """The arrived finite messages written into the server's copies: ``(received,
    fragment_terms, finite [R])`` (``finite`` is read only where ``arrived``). With ``S < R``
    the arrived rows are gathered ``S`` at a time and scattered back, so the cost follows the
    arrivals; ``S = R`` is the dense masked update (the same values)."""
    R, S = config.num_workers, config.num_active
    if S >= R:
        finite = jnp.all(jnp.isfinite(p), axis=(1, 2))
        accepted = arrived & finite
        received = jnp.where(accepted[:, None, None], p, server.received)
        return received, cutlib.worker_terms(server.cuts, received), finite

    def chunk(index, rows, carry):
        received, fragment_terms, finite = carry
        part = p[rows]
        ok = jnp.all(jnp.isfinite(part), axis=(1, 2))
        keep = jnp.where(ok, index, R)  # a rejected message (or padding) is not written
        received = received.at[keep].set(part, mode="drop")
        fragment_terms = fragment_terms.at[keep].set(cutlib.worker_terms(gather_cuts(server.cuts, rows), part),
                                                     mode="drop")
        return received, fragment_terms, finite.at[index].set(ok, mode="drop")

    return over_arrived(arrived, S, chunk, (server.received, server.fragment_terms, jnp.ones((R,), bool)))


def server_step(config: AsynDBTConfig, feedback_fn: FeedbackFn, state: EngineState, arrived, data: Data, refresh=None):
    """One server iteration (see the module docstring). Pure; jit with ``config``/``feedback_fn`` static.

    Args:
      config: validated hyper-parameters.
      feedback_fn: pure-JAX feedback ``(Configuration, queries) -> Feedback``.
      state: engine state.
      arrived: bool ``[R]``: workers whose messages reached the server.
      data: per-worker training/validation query batches.
      refresh: scalar bool, refresh the polyhedron now; default ``None``: every ``δ``
        iterations of the state's counter. A batch of runs (``jax.vmap`` over states) passes
        one unbatched flag so the refresh stays a real branch instead of running every time.

    Returns:
      ``(new_state, StepMetrics)``.
    """
    workers, server = state.workers, state.server
    key, k_refresh, k_reply = jax.random.split(state.key, 3)
    k_attack = jax.random.fold_in(state.key, 1)
    R = config.num_workers
    malicious = state.malicious
    data = _poisoned_data(config, data, malicious)
    p = _sent_messages(config, workers.selection.fragment_probs, server.consensus, k_attack, malicious)

    # 1–2. Accept the messages (p and the workers' e_lᵀq), update z and λ.
    server, num_rejected = server_receive(config, server, p, arrived, cutlib.demo_terms(server.cuts.demo_coef, workers.selection.demo_probs))
    z = server.consensus

    # 3. Refresh the polyhedron every δ iterations.
    refreshed = jnp.asarray(False)
    refresh_queries = jnp.zeros((), jnp.int32)
    lower_gap = jnp.asarray(jnp.nan, jnp.float32)
    before = server.cuts
    if config.bilevel and config.use_fragment:
        refreshed = (server.iteration % config.refresh_every) == 0 if refresh is None else jnp.asarray(refresh, bool)
        server, lower_gap = jax.lax.cond(
            refreshed,
            lambda s: _refresh(config, feedback_fn, s, workers.selection.demo_probs, data.train, k_refresh, malicious),
            lambda s: (s, jnp.asarray(jnp.nan, jnp.float32)),
            server,
        )
        train_batch = jax.tree.leaves(data.train)[0].shape[-1]
        evaluations = config.lower_rounds + (config.gap_norm == "value")
        refresh_queries = jnp.where(refreshed, evaluations * R * config.num_samples * train_batch, 0)

    # 4. Reply to the arrived workers; they compute their next update.
    if config.server_rule == "fedavg" and config.use_fragment:
        # FedAvg: the replied workers start from the broadcast global fragment (their Adam state is kept).
        broadcast = jnp.where(arrived[:, None, None], z[None], workers.selection.fragment_probs)
        workers = workers._replace(selection=workers.selection._replace(fragment_probs=broadcast))
    workers, losses = reply_arrived(config, feedback_fn, workers, server.cuts, arrived, data.validation, k_reply, malicious)

    val_batch = jax.tree.leaves(data.validation)[0].shape[-1]
    staleness = jnp.where(arrived, 0, server.staleness + 1).astype(jnp.int32)
    metrics = StepMetrics(
        num_arrived=jnp.sum(arrived),
        num_rejected=num_rejected,
        max_staleness=jnp.max(staleness),
        mean_loss=jnp.sum(jnp.where(arrived, losses, 0.0)) / jnp.maximum(jnp.sum(arrived), 1),
        queries=jnp.sum(arrived) * config.num_samples * val_batch + refresh_queries,
        refreshed=refreshed,
        active_cuts=jnp.sum(server.cuts.active),
        added_cuts=added_cuts(before, server.cuts),
        lower_gap=lower_gap.astype(jnp.float32),
    )
    server = server._replace(
        staleness=staleness, iteration=server.iteration + 1, rejected=server.rejected + num_rejected
    )
    return EngineState(workers, server, key, malicious), metrics


def written_cuts(before: cutlib.CutBuffer, after: cutlib.CutBuffer) -> jax.Array:
    """bool ``[H, C]``: the cut slots a refresh wrote (a new cut, or one that replaced a full row's weakest)."""
    return after.active & (~before.active | (after.offset != before.offset))


def added_cuts(before: cutlib.CutBuffer, after: cutlib.CutBuffer) -> jax.Array:
    """How many cut slots a refresh wrote (:func:`written_cuts`)."""
    return jnp.sum(written_cuts(before, after))


def cut_forces(config: AsynDBTConfig, cuts: cutlib.CutBuffer):
    """The cut forces on every worker's variables (``SelectionVariables``: ``Σ_l λ_l a_l^(v)``
    on ``p``, ``Σ_l λ_l e_l^(v)`` on ``q``), or ``0.0`` without a lower level."""
    if not (config.bilevel and config.use_fragment):
        return 0.0
    force = cutlib.cut_force(cuts)
    demos = force.demos if config.use_demos else jnp.zeros_like(force.demos)
    return SelectionVariables(force.fragment, demos)


def decoded_prompts(config: AsynDBTConfig, state: EngineState) -> Configuration:
    """The prompts each worker would use now: demonstrations from its own ``q`` (argmax), the
    fragment from the consensus ``z`` (distributed methods) or its own ``p`` (one worker);
    ``-1`` where a level is not tuned. Shapes ``fragment_words [R, M]``, ``demos [R, U]``."""
    return prompts_of(config, state.workers.selection, state.server.consensus)


def prompts_of(config: AsynDBTConfig, selection: SelectionVariables, consensus) -> Configuration:
    """:func:`decoded_prompts` of the workers whose variables ``selection`` holds (leading
    axis any ``G``) given the consensus ``z``: what a worker of the real runtime evaluates."""
    own = decode(selection)
    if config.num_workers > 1 and config.use_fragment:
        words = jnp.broadcast_to(jnp.argmax(consensus, -1).astype(jnp.int32), own.fragment_words.shape)
    else:
        words = own.fragment_words
    if not config.use_fragment:
        words = jnp.full_like(words, -1)
    demos = own.demos if config.use_demos else jnp.full_like(own.demos, -1)
    return Configuration(words, demos)


def evaluate(config: AsynDBTConfig, feedback_fn: FeedbackFn, state: EngineState, queries) -> jax.Array:
    """Accuracy ``[R]`` of every worker's decoded prompt (:func:`decoded_prompts`).

    Args:
      queries: leaves ``[B]`` (a shared test set) or ``[R, B]`` (each worker's own batch).
    """
    return evaluate_prompts(feedback_fn, decoded_prompts(config, state), queries)[0]


def pooled_scores(feedback_fn: FeedbackFn, prompts: Configuration, queries, voters) -> tuple[jax.Array, jax.Array]:
    """Federated model selection: every voting worker scores each of the ``R`` prompts
    (``fragment_words [R, M]``, ``demos [R, U]``) on its own batch (``queries`` leaves
    ``[R, B]``), and the server pools the counts. Returns accuracy and mean loss ``[R]`` of
    each prompt over the voters' ``R_v · B`` queries (``voters``: bool ``[R]``). One feedback
    call, ``R`` prompts per worker: ``R² B`` queries in all."""
    R = prompts.demos.shape[0]
    every = jax.tree.map(lambda x: jnp.broadcast_to(x[None], (R,) + x.shape), prompts)  # [R workers, R prompts, ...]
    answers = feedback_fn(every, queries)
    weight = jnp.asarray(voters, jnp.float32)[:, None, None] / (jnp.sum(voters) * answers.correct.shape[-1])
    return jnp.sum(answers.correct * weight, axis=(0, 2)), jnp.sum(answers.losses * weight, axis=(0, 2))


def evaluate_prompts(feedback_fn: FeedbackFn, prompts: Configuration, queries) -> tuple[jax.Array, jax.Array]:
    """Accuracy and mean loss ``[R]`` of one prompt per worker (``fragment_words [R, M]``,
    ``demos [R, U]``) on ``queries`` (leaves ``[B]``, shared, or ``[R, B]``, each worker's own)."""
    one = Configuration(prompts.fragment_words[:, None, :], prompts.demos[:, None, :])
    R = prompts.demos.shape[0]
    batched = jax.tree.map(lambda x: x if x.ndim >= 2 and x.shape[0] == R else jnp.broadcast_to(x, (R,) + x.shape), queries)
    answers = feedback_fn(one, batched)
    return jnp.mean(answers.correct[:, 0, :], axis=-1), jnp.mean(answers.losses[:, 0, :], axis=-1)
