"""The benchmark's nets and data: DeepOBS 1.1.2 nets on random data.

Every net comes from DeepOBS's PyTorch test-problem modules, imported through
``backobs.adapter.deepobs`` (TensorFlow-free), with DeepOBS's own ``flatten`` module replaced by
``torch.nn.Flatten`` (BackPACK's second-order extensions refuse DeepOBS's; the same swap is
done for every library so that the comparison is like for like).
"""

from typing import Tuple

import torch
from catalog import NetSpec
from torch import Tensor, nn


def _swap_flatten(module: nn.Module) -> None:
    """Replace every DeepOBS ``flatten`` module inside ``module`` by ``nn.Flatten()``."""
    for name, child in module.named_children():
        if type(child).__name__ == "flatten" and type(child).__module__.startswith("deepobs"):
            setattr(module, name, nn.Flatten())
        else:
            _swap_flatten(child)


def build_net(spec: NetSpec, seed: int = 0) -> nn.Module:
    """The DeepOBS net of ``spec`` with ``nn.Flatten``, initialised from ``seed``.

    Args:
        spec: Which net.
        seed: Seed of DeepOBS's initialisation.

    Returns:
        The net, in training mode.
    """
    from backobs.adapter.deepobs import pytorch

    modules = pytorch.testproblems.testproblems_modules
    torch.manual_seed(seed)
    net = getattr(modules, spec.factory)(**dict(spec.kwargs))
    _swap_flatten(net)
    return net.train()


def make_data(
    spec: NetSpec, batch_size: int, device: torch.device, seed: int = 1
) -> Tuple[Tensor, Tensor]:
    """A random mini-batch of the net's input shape and random class labels.

    Args:
        spec: Which net.
        batch_size: Number of samples.
        device: Where the tensors live.
        seed: Seed of the data.

    Returns:
        Inputs ``[N, *input_shape]`` and labels ``[N]``.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *spec.input_shape), generator=gen)
    y = torch.randint(0, spec.num_classes, (batch_size,), generator=gen)
    return x.to(device), y.to(device)


def has_dropout(net: nn.Module) -> bool:
    """Whether ``net`` contains dropout (random in training mode)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in net.modules())


def loss_factory() -> nn.Module:
    """The loss of every DeepOBS classification problem: mean cross-entropy."""
    return nn.CrossEntropyLoss(reduction="mean")
