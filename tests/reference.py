"""Independent float64 reference implementations: the textbook definitions, no shortcuts."""

from __future__ import annotations

import math

import numpy as np


def naive_mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """O(N^2) loop over ordered pairs i != j."""
    v = np.asarray(vectors, dtype=np.float64)
    n = len(v)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += v[i] @ v[j] / (np.linalg.norm(v[i]) * np.linalg.norm(v[j]))
    return total / (n * (n - 1))


def naive_singular_entropy(weight: np.ndarray) -> tuple[float, float]:
    """(KL(p || uniform), H(p)) with p = sigma / sum(sigma) from a full SVD."""
    sigma = np.linalg.svd(np.asarray(weight, dtype=np.float64), compute_uv=False)
    p = sigma / sigma.sum()
    h = -sum(x * math.log(x) for x in p if x > 0)
    return math.log(len(sigma)) - h, h


def naive_cross_entropy(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Mean -ln softmax(logits[t])[tokens[t+1]] over every predicted position, in float64."""
    logits = np.asarray(logits, dtype=np.float64)  # [seq, pos, vocab]
    total, count = 0.0, 0
    for s in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            row = logits[s, t]
            log_z = row.max() + math.log(np.exp(row - row.max()).sum())
            total += log_z - row[tokens[s, t + 1]]
            count += 1
    return total / count


def gram_mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """The same definition through the explicit N x N cosine matrix (off-diagonal mean)."""
    v = np.asarray(vectors, dtype=np.float64)
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    gram = u @ u.T
    n = len(v)
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def naive_linearity(x: np.ndarray, y: np.ndarray) -> float:
    """The paper's recipe with numpy's pseudo-inverse."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    x = x / np.linalg.norm(x)
    y = y / np.linalg.norm(y)
    a = np.linalg.pinv(x) @ y
    return float(1 - np.linalg.norm(x @ a - y) ** 2)


def hsic_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA through n x n Gram matrices and the centring matrix H (Kornblith et al., eq. 3)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_)))
