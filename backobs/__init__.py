"""BackOBS: BackPACK-style backprop extensions on DeepOBS test problems."""

from backobs import _deepobs  # noqa: F401  (imports DeepOBS's PyTorch half, no TensorFlow)
