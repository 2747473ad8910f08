"""Plain NumPy references (float64, loops where the paper's math is a loop)."""

import numpy as np


def project_simplex(v):
    """Sort-based Euclidean projection of each row (Duchi et al. 2008), float64."""
    v = np.asarray(v, dtype=np.float64)
    out = np.empty_like(v)
    for idx in np.ndindex(v.shape[:-1]):
        row = v[idx]
        u = np.sort(row)[::-1]
        css = np.cumsum(u)
        k = np.arange(1, len(row) + 1)
        rho = np.nonzero(u - (css - 1) / k > 0)[0][-1] + 1
        theta = (css[rho - 1] - 1) / rho
        out[idx] = np.maximum(row - theta, 0)
    return out


def bdpl_bisection(row, max_steps=21, tolerance=1e-3):
    """BDPL's solve_v_total_exact + clamp, transcribed line by line (one row)."""
    row = np.asarray(row, dtype=np.float64)
    a, b = 0.0, row.max()

    def f(v):
        return np.clip(row - v, 0, 1).sum() - 1

    itr = 0
    while True:
        itr += 1
        v = (a + b) / 2
        obj = f(v)
        if abs(obj) < tolerance or itr > max_steps - 1:
            break
        if obj < 0:
            b = v
        else:
            a = v
    return np.clip(row - v, 0, 1)


def policy_gradient(probs, samples, losses, variant="exact"):
    """Spec §2 estimator for one distribution matrix, with explicit loops over samples and rows."""
    probs = np.asarray(probs, np.float64)
    rows, n = probs.shape
    num = len(losses)
    mean = float(np.mean(losses))
    grad = np.zeros_like(probs)
    for k in range(num):
        for i in range(rows):
            d = np.zeros(n)
            if variant == "negative":
                with np.errstate(divide="ignore"):
                    d = np.where(probs[i] > 0, -1.0 / np.where(probs[i] > 0, probs[i], 1), 0.0)
            j = samples[k][i]
            d[j] = 1.0 / probs[i, j]
            grad[i] += (losses[k] - mean) / (num - 1) * d
    return grad
