#!/usr/bin/env python3
"""Security estimate for bootstrapping's ephemeral sparse secret (no Sage needed).

The Hamming-weight-h secret s' of sparse-secret encapsulation appears in exactly one public
object: the key switching s -> s', an RLWE sample under s' over the base primes and a few
special primes (`low_key_shape` in src/ckks/bootstrap.rs). This prints the cost of the primal
attack on that instance in the core-SVP model (ADPS16: BKZ-beta costs 2^(0.292 beta)), with the
two refinements that matter for a sparse secret:

* Bai-Galbraith scaling: the secret's coordinates (variance h/n) are scaled up to the error's
  size, which shortens the target vector;
* drop-and-solve: guess k coordinates of the secret to be zero, solve the smaller instance, and
  repeat 1/p_k times, p_k = C(n-k, h)/C(n, h) (what the lattice estimator does for sparse
  secrets).

For calibration it prints the same model on the dense ternary secret at the HomomorphicEncryption.org
bound (N = 2^16, log2 q = 1770: "128-bit" in that standard's estimates). The model leaves out the
dual / meet-in-the-middle hybrids, which can be stronger on sparse secrets; a run of the lattice
estimator (Sage) is the check this does not replace.

    python3 scripts/sparse_secret_security.py            # the N = 2^16 preset's numbers
    python3 scripts/sparse_secret_security.py --log-q 146 --h 32
"""

import argparse
import math

SIGMA_E = 3.2


def log2_delta(beta):
    """Root Hermite factor of BKZ-beta (ADPS16 / Chen's asymptotic), log2."""
    return math.log2((math.pi * beta) ** (1.0 / beta) * beta / (2 * math.pi * math.e)) / (
        2 * (beta - 1)
    )


def usvp_beta(n, log_q, var_s, m_max):
    """Smallest block size solving uSVP on n secret coordinates, with the best sample count."""
    # Scale the secret's coordinates to the error's standard deviation.
    log_nu = math.log2(SIGMA_E) - 0.5 * math.log2(var_s)

    def solves(beta):
        best = -math.inf
        step = max(1, m_max // 512)
        for m in range(step, m_max + 1, step):
            d = n + m + 1
            lhs = math.log2(SIGMA_E) + 0.5 * math.log2(beta)
            rhs = (2 * beta - d - 1) * log2_delta(beta) + (m * log_q + n * log_nu) / d
            best = max(best, rhs - lhs)
        return best >= 0

    lo, hi = 40, n + m_max
    if not solves(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if solves(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def log2_comb(a, b):
    return (math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)) / math.log(2)


def sparse_estimate(n, log_q, h, guess_weight=1.0):
    """min over dropped coordinates k of 0.292*beta(n-k) - guess_weight * log2 p_k.

    guess_weight 1: plain drop-and-solve; 0.5: an idealized meet-in-the-middle that pays only
    the square root of the guesses (a floor under the hybrid attacks, not a real attack)."""
    best = None
    # Kept dimensions on a geometric grid (3 % apart) from 2h up to n.
    rests = []
    r = 2.0 * h
    while r < n:
        rests.append(int(r))
        r *= 1.03
    for rest in rests + [n]:
        k = n - rest
        beta = usvp_beta(rest, log_q, h / rest, n)
        if beta is None:
            continue
        cost = 0.292 * beta - guess_weight * (log2_comb(rest, h) - log2_comb(n, h))
        if best is None or cost < best[0]:
            best = (cost, k, beta)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log-n", type=int, default=16)
    ap.add_argument("--log-q", type=float, action="append")
    ap.add_argument("--h", type=int, default=32)
    a = ap.parse_args()
    n = 1 << a.log_n
    dense = usvp_beta(n, 1770, 2.0 / 3.0, n)
    print(
        f"calibration: dense ternary, N = 2^{a.log_n}, log2 q = 1770: beta {dense}, "
        f"core-SVP 2^{0.292 * dense:.1f}"
    )
    for log_q in a.log_q or [116.0, 146.0]:
        cost, k, beta = sparse_estimate(n, log_q, a.h)
        floor, k2, beta2 = sparse_estimate(n, log_q, a.h, 0.5)
        print(
            f"h = {a.h}, N = 2^{a.log_n}, log2 q = {log_q:g}: drop-and-solve 2^{cost:.1f} "
            f"(drop {k}, beta {beta}); square-root-of-guesses floor 2^{floor:.1f} "
            f"(drop {k2}, beta {beta2}); core-SVP"
        )

if __name__ == "__main__":
    main()
