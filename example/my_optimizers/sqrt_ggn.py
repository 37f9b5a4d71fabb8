"""A square-root preconditioner on the Monte-Carlo GGN diagonal, as a researcher writes one."""

import torch

from backpack_core.extensions import DiagGGNMC


class SqrtDiagGGN(torch.optim.Optimizer):
    """θ ← θ − lr · g / (sqrt(diag GGN) + eps), with the Monte-Carlo GGN diagonal."""

    def __init__(self, params, lr: float, eps: float = 1e-8, mc_samples: int = 1):
        if lr <= 0 or eps <= 0 or mc_samples < 1:
            raise ValueError("lr and eps must be > 0 and mc_samples >= 1")
        super().__init__(params, {"lr": lr, "eps": eps})
        self.mc_samples = mc_samples

    def extensions(self):
        """What the backward pass before the next ``step()`` must compute."""
        return [DiagGGNMC(mc_samples=self.mc_samples)]

    @torch.no_grad()
    def step(self, closure=None):
        """One step from the gradients and ``diag_ggn_mc`` of the last backward pass."""
        for group in self.param_groups:
            for p in group["params"]:
                denominator = p.diag_ggn_mc.sqrt().add_(group["eps"])
                p.addcdiv_(p.grad, denominator, value=-group["lr"])
