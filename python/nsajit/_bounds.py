"""Block counts in plain Python (no torch, no ctypes), so that torch.compile traces them as arithmetic on shapes."""

from __future__ import annotations


def num_cmp_blocks(length: int, l: int, d: int) -> int:
    """Compressed blocks of a sequence of `length` tokens: max(0, floor((length - l) / d) + 1) (NSA.md)."""
    return (length - l) // d + 1 if length >= l else 0


def varlen_cmp_rows(total: int, num_seqs: int, max_seqlen: int, l: int, d: int) -> int:
    """The rows of a varlen batch's compressed keys when only (T, num_seqs, max_seqlen) are known: an upper bound of
    the sum of num_cmp_blocks over the sequences. The same formula as runtime/validate.cpp batch_sums (the tests check
    that they agree): at most k = T // M sequences of M = min(max_seqlen, T) tokens and one of T mod M, since
    num_cmp_blocks(len) <= max(0, len - l + d) / d, a convex function of len."""
    if total <= 0:
        return 0
    m = min(max_seqlen, total)
    k, r = total // m, total % m  # (divmod does not take torch's symbolic sizes)

    def h(length: int) -> int:
        return max(length - l + d, 0)

    return min((k * h(m) + h(r)) // d, num_seqs * num_cmp_blocks(m, l, d))
