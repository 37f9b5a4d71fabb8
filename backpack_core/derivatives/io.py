"""What the engine keeps of one module call for the backward pass."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from torch import Tensor
from torch.nn import Module


@dataclass
class ModuleIO:
    """What the engine kept of one call of a module.

    Attributes:
        module: The module that was called.
        input: Its first input, ``[N, *in]``.
        output: Its output (detached), ``[N, *out]``.
        target: For losses, the second input (the labels), else ``None``.
        extra: What the module's derivatives captured at forward time (e.g. a dropout mask).
        memo: Scratch space for values that several questions about this call share.
    """

    module: Module
    input: Tensor
    output: Tensor
    target: Optional[Tensor] = None
    extra: Any = None
    memo: Dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """The number of samples ``N``."""
        return self.input.shape[0]

    @property
    def input_shape(self):
        """The input's shape ``[N, *in]``."""
        return self.input.shape

    @property
    def output_shape(self):
        """The output's shape ``[N, *out]``."""
        return self.output.shape
