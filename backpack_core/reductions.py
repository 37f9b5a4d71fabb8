"""Long float32 reductions that keep their accuracy.

On the CPU, ``torch.linalg.vector_norm`` over one long row, and a matrix product whose
result is a few rows by a few rows with a long inner dimension (``x @ x.T`` for ``x`` of
``[3, 3_000_000]``), accumulate in a way whose float32 error grows with the length: a
relative error of 1e-4 on 3.2 M entries (a squared norm) and 5e-5 (a 3 x 3 Gram matrix),
against 1e-7 for ``torch.sum``. Reducing pieces of moderate length and adding the pieces
keeps the error near 1e-7 at the same speed (``benchmark/reductions.py``; numbers in
``benchmark/RESULTS.md``).
"""

import torch
from torch import Tensor

#: Entries per piece of a squared norm.
NORM_PIECE = 4096
#: Columns per piece of a Gram matrix.
GRAM_PIECE = 16384


def squared_norms(x: Tensor) -> Tensor:
    """``(x**2).sum(-1)`` without a temporary as large as ``x``."""
    length = x.shape[-1]
    if length <= NORM_PIECE:
        return torch.linalg.vector_norm(x, dim=-1).square()
    whole = length - length % NORM_PIECE
    pieces = x[..., :whole].unflatten(-1, (-1, NORM_PIECE))
    result = torch.linalg.vector_norm(pieces, dim=-1).square_().sum(-1)
    if whole < length:
        result += torch.linalg.vector_norm(x[..., whole:], dim=-1).square_()
    return result


def row_gram(rows: Tensor, out: Tensor = None) -> Tensor:
    """``rows @ rows.T`` for ``rows`` of ``[m, k]``, added to ``out`` if given."""
    for piece in rows.split(GRAM_PIECE, dim=1):
        out = piece @ piece.T if out is None else out.addmm_(piece, piece.T)
    return out
