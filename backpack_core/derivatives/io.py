"""What the engine keeps of one module call for the backward pass.

The engine keeps a call's input (output) only if the module's derivatives read it
(``Derivatives.reads_input`` / ``reads_output``), so that an extended model holds no tensor
that autograd would have freed. Shapes and the batch size are always there. Reading a
tensor that was not kept raises :class:`TensorNotKept`, which names the flag to set.
"""

from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import Module


class TensorNotKept(RuntimeError):
    """A derivatives method read ``io.input`` or ``io.output``, which the engine did not keep."""


class ModuleIO:
    """What the engine kept of one call of a module.

    Attributes:
        module: The module that was called.
        input: Its first input ``[N, *in]`` (detached), if its derivatives read it
            (``reads_input``); otherwise reading it raises :class:`TensorNotKept`.
        output: Its output ``[N, *out]`` (detached), if its derivatives read it
            (``reads_output``); otherwise reading it raises :class:`TensorNotKept`.
        target: For losses, the second input (the labels), else ``None``.
        extra: What the module's derivatives captured at forward time (e.g. a dropout mask).
        memo: Scratch space for values that several questions about this call share.
        input_shape: The input's shape ``[N, *in]``, always there.
        output_shape: The output's shape ``[N, *out]``, always there.
        batch_size: The number of samples ``N``, always there.
    """

    def __init__(
        self,
        module: Module,
        input: Optional[Tensor] = None,
        output: Optional[Tensor] = None,
        target: Optional[Tensor] = None,
        extra: Any = None,
        memo: Optional[Dict[str, Any]] = None,
        *,
        input_shape: Optional[Sequence[int]] = None,
        output_shape: Optional[Sequence[int]] = None,
        reader: Optional[str] = None,
    ):
        """Keep a call.

        Args:
            module: The module that was called.
            input: Its input, or ``None`` if not kept (then ``input_shape`` is required).
            output: Its output, or ``None`` if not kept (then ``output_shape`` is required).
            target: For losses, the labels.
            extra: What the derivatives captured at forward time.
            memo: Initial scratch space.
            input_shape: The input's shape; defaults to ``input.shape``.
            output_shape: The output's shape; defaults to ``output.shape``.
            reader: The name of the derivatives class, for the error raised on reading a
                tensor that was not kept.

        Raises:
            ValueError: If neither a tensor nor its shape is given.
        """
        if input is None and input_shape is None:
            raise ValueError("ModuleIO needs the input or its shape")
        if output is None and output_shape is None:
            raise ValueError("ModuleIO needs the output or its shape")
        self.module = module
        self._input = input
        self._output = output
        self.target = target
        self.extra = extra
        self.memo = {} if memo is None else memo
        self._input_shape = torch.Size(input.shape if input_shape is None else input_shape)
        self._output_shape = torch.Size(output.shape if output_shape is None else output_shape)
        self._reader = reader
        self._released = False

    def _not_kept(self, which: str) -> TensorNotKept:
        if self._released:
            return TensorNotKept(
                f"io.{which} of {self.module} was read after the backward pass through this "
                "call, which released what the engine kept of it."
            )
        reader = self._reader or "The module's derivatives"
        return TensorNotKept(
            f"{reader} read io.{which} of {self.module}, but {reader}.reads_{which} is "
            f"False, so the engine did not keep the {which}. Set reads_{which} = True on "
            f"{reader}, or read only io.{which}_shape / io.batch_size if the shape is all "
            "the method needs."
        )

    @property
    def input(self) -> Tensor:
        """The input ``[N, *in]``; raises :class:`TensorNotKept` if it was not kept."""
        if self._input is None:
            raise self._not_kept("input")
        return self._input

    @property
    def output(self) -> Tensor:
        """The output ``[N, *out]``; raises :class:`TensorNotKept` if it was not kept."""
        if self._output is None:
            raise self._not_kept("output")
        return self._output

    @property
    def batch_size(self) -> int:
        """The number of samples ``N``."""
        return self._input_shape[0]

    @property
    def input_shape(self) -> torch.Size:
        """The input's shape ``[N, *in]``."""
        return self._input_shape

    @property
    def output_shape(self) -> torch.Size:
        """The output's shape ``[N, *out]``."""
        return self._output_shape

    def release(self) -> None:
        """Drop the tensors and the scratch space; shapes stay readable."""
        self._input = self._output = self.target = self.extra = None
        self.memo = {}
        self._released = True

    def __repr__(self) -> str:
        kept = [name for name in ("input", "output") if getattr(self, f"_{name}") is not None]
        return (
            f"ModuleIO({self.module}, input_shape={tuple(self._input_shape)}, "
            f"output_shape={tuple(self._output_shape)}, kept={kept})"
        )
