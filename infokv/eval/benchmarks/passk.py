"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").

With ``n`` samples of a problem of which ``c`` pass, the probability that at least one of ``k`` samples
drawn without replacement passes is

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

The product form avoids the huge binomial coefficients; it is exactly 1 when ``n - c < k`` (every draw
of ``k`` contains a passing sample). A benchmark's pass@k is the mean over its problems.
"""

from __future__ import annotations

from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them correct."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise ValueError(f"pass@k: n={n!r}, c={c!r}, k={k!r} must be integers")
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    failing_all = 1.0
    for i in range(n - c + 1, n + 1):
        failing_all *= 1.0 - k / i
    return 1.0 - failing_all


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given as ``(n, c)`` pairs."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("pass@k: no problems given")
    return sum(values) / len(values)
