"""The table of correctness settings: a model, a loss, inputs and targets each.

A new case is one ``Setting`` entry in ``SETTINGS``. Every setting is tiny (features <= 8,
images <= 6x6, batch size >= 2) so that the whole suite stays fast on two cores.

Dropout appears only in evaluation mode (``model.eval()``): a train-mode mask cannot be
reproduced reliably by the reference (re-seeding before two forward passes is not a
guarantee that both draw the same mask), so the settings check that an evaluated Dropout
is handled as the identity.
"""

import functools
import math
from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from torch import Tensor, nn

DTYPE_TOLERANCES = {
    torch.float64: {"rtol": 1e-7, "atol": 1e-10},
    torch.float32: {"rtol": 1e-4, "atol": 1e-6},
}


@dataclass(frozen=True)
class Setting:
    """One correctness case.

    Attributes:
        id: Name used as the pytest id.
        make_model: Builds the (unextended) network; called after seeding.
        input_shape: Shape of the inputs ``X``, batch axis first.
        loss: ``"ce"`` (``CrossEntropyLoss``) or ``"mse"`` (``MSELoss``).
        reduction: ``"mean"`` or ``"sum"``.
        dtype: Floating point type of parameters and inputs.
        eval_mode: Whether to call ``model.eval()`` (settings with Dropout).
    """

    id: str
    make_model: Callable[[], nn.Module]
    input_shape: Tuple[int, ...]
    loss: str = "ce"
    reduction: str = "mean"
    dtype: torch.dtype = torch.float64
    eval_mode: bool = False

    @property
    def tolerances(self) -> dict:
        """``rtol`` and ``atol`` for comparisons in this setting's dtype."""
        return DTYPE_TOLERANCES[self.dtype]

    def build(
        self, seed: int = 0, device: str = "cpu"
    ) -> Tuple[nn.Module, nn.Module, Tensor, Tensor]:
        """Create model, loss module, inputs and targets, deterministic in ``seed``.

        Args:
            seed: Seed of parameters, inputs and targets.
            device: Where to put model and data.

        Returns:
            ``(model, lossfunc, X, y)``; neither model nor loss is extended.
        """
        torch.manual_seed(seed)
        model = self.make_model().to(device=device, dtype=self.dtype)
        if self.eval_mode:
            model.eval()
        X = torch.randn(self.input_shape, dtype=self.dtype, device=device)
        with torch.no_grad():
            output = model(X)
        if self.loss == "ce":
            lossfunc = nn.CrossEntropyLoss(reduction=self.reduction)
            y = torch.randint(output.shape[1], (output.shape[0],), device=device)
        elif self.loss == "mse":
            lossfunc = nn.MSELoss(reduction=self.reduction)
            y = torch.randn(output.shape, dtype=self.dtype, device=device)
        else:
            raise ValueError(f"unknown loss {self.loss!r}")
        return model, lossfunc, X, y


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
def tf_same_padding(module: nn.ZeroPad2d, args: Tuple[Tensor]) -> None:
    """Forward pre-hook: set ``module.padding`` to TensorFlow's "same" padding.

    As DeepOBS does, for the 3x3 kernel, stride 2 of the convolution that follows.
    """
    kernel, stride = 3, 2
    pads = []
    for size in reversed(args[0].shape[2:]):
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    module.padding = tuple(pads)


def tf_same_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """``Sequential(ZeroPad2d(0) with a padding-changing pre-hook, Conv2d(k=3, stride=2))``."""
    pad = nn.ZeroPad2d(0)
    pad.register_forward_pre_hook(tf_same_padding)
    return nn.Sequential(pad, nn.Conv2d(in_channels, out_channels, 3, stride=2))


def mlp(activation: Callable[[], nn.Module], out: int = 3) -> Callable[[], nn.Module]:
    """Builder of ``Linear(6, 5), activation, Linear(5, out)``."""
    return lambda: nn.Sequential(nn.Linear(6, 5), activation(), nn.Linear(5, out))


def conv2d_net(conv: Callable[[], nn.Module], flat_features: int, *tail: Callable) -> Callable:
    """Builder of ``conv, *tail, Flatten, Linear(flat_features, 3)``.

    ``conv`` and ``tail`` are module classes or factories: every build makes new modules (the
    engine's hooks on one build must not leak into the next).
    """
    return lambda: nn.Sequential(
        conv(), *(make() for make in tail), nn.Flatten(), nn.Linear(flat_features, 3)
    )


class Cube(nn.Module):
    """``x^3 / 3 + x``: a user's elementwise module that reuses its input in its forward."""

    def forward(self, x: Tensor) -> Tensor:
        return x * x * x / 3 + x


def fallback_conv_net(activation: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Builder of a small conv net with an activation the engine has no derivatives for."""
    return lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        activation(),
        nn.Conv2d(3, 2, 2, stride=2),
        activation(),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


class ResidualMLP(nn.Module):
    """``x = lin0(x)``, ``y = lin2(act(lin1(x))) + x``, then ``out(act2(y))``."""

    def __init__(self, activation: Callable[[], nn.Module], after: Callable[[], nn.Module]):
        super().__init__()
        self.lin0, self.lin1, self.lin2 = nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 5)
        self.act, self.after, self.out = activation(), after(), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.lin0(x)
        return self.out(self.after(self.lin2(self.act(self.lin1(x))) + x))


class ResidualConvNet(nn.Module):
    """A conv net with two residual blocks, the second after the first (no module in between)."""

    def __init__(self, activation: Callable[[], nn.Module]):
        super().__init__()
        self.conv0 = nn.Conv2d(2, 3, 3, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), activation())
        self.block2 = nn.Sequential(activation(), nn.Conv2d(3, 3, 1))
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv0(x)
        x = x + self.block1(x)
        x = self.block2(x) + x
        return self.head(x)


class SharedInput(nn.Module):
    """One tensor read by two branches whose results are subtracted: ``tanh(a(x)) - b(x)``."""

    def __init__(self):
        super().__init__()
        self.lin0, self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(5, 4)
        self.act, self.out = nn.Tanh(), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.lin0(x)
        return self.out(torch.sub(self.act(self.a(x)), self.b(x), alpha=2.0))


def frozen_weight_mlp() -> nn.Module:
    """An MLP whose first weight and last bias do not require gradients."""
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    model[0].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    return model


def frozen_conv_weight_net() -> nn.Module:
    """A convolution whose weight does not require gradients (its bias does)."""
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(8, 3))
    model[0].weight.requires_grad_(False)
    return model


def nested_sequential() -> nn.Module:
    """Sequentials inside Sequentials, with an Identity."""
    return nn.Sequential(
        nn.Sequential(nn.Linear(6, 5), nn.Tanh()),
        nn.Sequential(nn.Identity(), nn.Sequential(nn.Linear(5, 4), nn.ReLU())),
        nn.Linear(4, 3),
    )


def linear_extra_dims_net() -> nn.Module:
    """Linear on ``[N, T, in]``, then Flatten and a classifier."""
    return nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(6, 3))


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
def _linear():
    return nn.Linear(6, 4)


F64, F32 = torch.float64, torch.float32

SETTINGS = [
    # single Linear layer, every loss and reduction
    Setting("linear-ce-mean", _linear, (3, 6), "ce", "mean"),
    Setting("linear-ce-sum", _linear, (3, 6), "ce", "sum"),
    Setting("linear-mse-mean", _linear, (3, 6), "mse", "mean"),
    Setting("linear-mse-sum", _linear, (3, 6), "mse", "sum"),
    Setting("linear-nobias-ce-mean", lambda: nn.Linear(6, 4, bias=False), (3, 6)),
    Setting("linear-extradims-mse-mean", lambda: nn.Linear(4, 3), (3, 2, 4), "mse", "mean"),
    Setting("linear-extradims-mse-sum", lambda: nn.Linear(4, 3), (3, 2, 4), "mse", "sum"),
    Setting("linear-extradims-flatten-ce-mean", linear_extra_dims_net, (3, 2, 4)),
    Setting("linear-extradims-flatten-ce-sum", linear_extra_dims_net, (3, 2, 4), "ce", "sum"),
    # positions few enough that norms take the Gram form (T (in + out) < in * out)
    Setting("linear-extradims-wide-mse-sum", lambda: nn.Linear(8, 6), (3, 2, 8), "mse", "sum"),
    # a convolution with one output position takes the outer-product routes of Linear
    Setting(
        "conv2d-one-position-ce-mean",
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten()),
        (3, 2, 3, 3),
    ),
    Setting(
        "conv2d-one-position-groups-ce-sum",
        lambda: nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.Flatten()),
        (3, 4, 3, 3),
        "ce",
        "sum",
    ),
    Setting(
        "deep-linear-ce-mean",
        lambda: nn.Sequential(
            nn.Linear(6, 5), nn.Identity(), nn.Linear(5, 4), nn.Flatten(), nn.Linear(4, 3)
        ),
        (4, 6),
    ),
    Setting(
        "deep-linear-mse-sum",
        lambda: nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4, bias=False), nn.Linear(4, 3)),
        (3, 6),
        "mse",
        "sum",
    ),
    # MLPs with activations (Sigmoid, Tanh: Hessian residual terms)
    Setting("mlp-relu-ce-mean", mlp(nn.ReLU), (4, 6)),
    Setting("mlp-leakyrelu-ce-sum", mlp(lambda: nn.LeakyReLU(0.1)), (4, 6), "ce", "sum"),
    Setting("mlp-sigmoid-ce-mean", mlp(nn.Sigmoid), (4, 6)),
    Setting("mlp-sigmoid-mse-sum", mlp(nn.Sigmoid), (3, 6), "mse", "sum"),
    Setting("mlp-tanh-mse-mean", mlp(nn.Tanh), (3, 6), "mse", "mean"),
    Setting("mlp-tanh-ce-sum", mlp(nn.Tanh), (3, 6), "ce", "sum"),
    Setting(
        "mlp-dropout-eval-identity-ce-mean",
        lambda: nn.Sequential(
            nn.Linear(6, 5), nn.Dropout(0.5), nn.Identity(), nn.Tanh(), nn.Linear(5, 3)
        ),
        (3, 6),
        eval_mode=True,
    ),
    Setting("nested-sequential-ce-mean", nested_sequential, (3, 6)),
    Setting("frozen-params-ce-mean", frozen_weight_mlp, (3, 6)),
    # convolutions
    Setting(
        "conv1d-relu-ce-mean",
        lambda: nn.Sequential(
            nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)
        ),
        (3, 2, 6),
    ),
    Setting(
        "conv1d-stride-mse-sum",
        lambda: nn.Sequential(nn.Conv1d(2, 2, 2, stride=2), nn.Flatten()),
        (2, 2, 6),
        "mse",
        "sum",
    ),
    Setting("conv2d-ce-mean", conv2d_net(lambda: nn.Conv2d(2, 3, 3), 27), (3, 2, 5, 5)),
    Setting(
        "conv2d-nobias-ce-sum",
        conv2d_net(lambda: nn.Conv2d(2, 3, 3, bias=False), 27),
        (3, 2, 5, 5),
        "ce",
        "sum",
    ),
    Setting(
        "conv2d-stride-padding-sigmoid-ce-mean",
        conv2d_net(lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), 27, nn.Sigmoid),
        (3, 2, 5, 5),
    ),
    Setting(
        "conv2d-same-tanh-mse-mean",
        lambda: nn.Sequential(nn.Conv2d(2, 2, 3, padding="same"), nn.Tanh(), nn.Flatten()),
        (2, 2, 4, 4),
        "mse",
        "mean",
    ),
    Setting(
        "conv2d-dilation-ce-mean",
        conv2d_net(lambda: nn.Conv2d(2, 3, 3, dilation=2, padding=1), 27),
        (3, 2, 5, 5),
    ),
    Setting(
        "conv2d-stride-exceeds-kernel-tanh-ce-mean",
        conv2d_net(lambda: nn.Conv2d(2, 2, 2, stride=3), 8, nn.Tanh),
        (3, 2, 5, 5),
    ),
    Setting(
        "conv2d-groups-ce-mean",
        conv2d_net(lambda: nn.Conv2d(4, 4, 3, groups=2), 16, nn.ReLU),
        (3, 4, 4, 4),
    ),
    Setting(
        "conv2d-groups-nobias-rect-ce-sum",
        conv2d_net(lambda: nn.Conv2d(4, 2, (3, 2), groups=2, bias=False), 12),
        (2, 4, 4, 4),
        "ce",
        "sum",
    ),
    Setting(
        "conv2d-flatten-ce-mean",
        lambda: nn.Sequential(nn.Conv2d(2, 2, 2), nn.Flatten()),
        (3, 2, 3, 3),
    ),
    Setting(
        "conv2d-mse-sum",
        lambda: nn.Sequential(nn.Conv2d(2, 2, 2), nn.Flatten()),
        (2, 2, 3, 3),
        "mse",
        "sum",
    ),
    Setting(
        "conv2d-padding-relu-conv-mse-sum",
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2), nn.Flatten()
        ),
        (2, 2, 4, 4),
        "mse",
        "sum",
    ),
    Setting(
        "conv3d-ce-mean",
        lambda: nn.Sequential(nn.Conv3d(2, 2, 2), nn.Flatten(), nn.Linear(16, 3)),
        (2, 2, 3, 3, 3),
    ),
    # pooling, padding, upsampling
    Setting(
        "maxpool2d-ce-mean",
        conv2d_net(lambda: nn.Conv2d(2, 3, 3, padding=1), 12, nn.ReLU, lambda: nn.MaxPool2d(2)),
        (3, 2, 4, 4),
    ),
    Setting(
        "maxpool2d-stride1-ce-sum",
        conv2d_net(lambda: nn.Conv2d(2, 2, 2), 8, lambda: nn.MaxPool2d(2, stride=1)),
        (2, 2, 4, 4),
        "ce",
        "sum",
    ),
    Setting(
        "avgpool2d-tanh-ce-mean",
        conv2d_net(lambda: nn.Conv2d(2, 3, 3, padding=1), 12, lambda: nn.AvgPool2d(2), nn.Tanh),
        (3, 2, 4, 4),
    ),
    Setting(
        "zeropad2d-ce-mean",
        lambda: nn.Sequential(
            nn.ZeroPad2d((1, 0, 1, 1)), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(24, 3)
        ),
        (3, 2, 4, 4),
    ),
    Setting(
        "tf-same-padding-hook-ce-mean",
        lambda: nn.Sequential(tf_same_conv(2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 3)),
        (3, 2, 5, 5),
    ),
    Setting(
        "upsampling-bilinear-ce-mean",
        lambda: nn.Sequential(
            nn.Conv2d(2, 2, 1),
            nn.UpsamplingBilinear2d(scale_factor=2),
            nn.Sigmoid(),
            nn.Flatten(),
            nn.Linear(32, 3),
        ),
        (2, 2, 2, 2),
    ),
    # curvature passed back through pooling and padding after a curved activation
    Setting(
        "sigmoid-maxpool2d-ce-mean",
        conv2d_net(lambda: nn.Conv2d(2, 2, 3, padding=1), 8, nn.Sigmoid, lambda: nn.MaxPool2d(2)),
        (3, 2, 4, 4),
    ),
    Setting(
        "tanh-zeropad2d-conv-mse-mean",
        lambda: nn.Sequential(
            nn.Conv2d(2, 2, 2), nn.Tanh(), nn.ZeroPad2d(1), nn.Conv2d(2, 2, 2), nn.Flatten()
        ),
        (2, 2, 4, 4),
        "mse",
        "mean",
    ),
    Setting("frozen-conv-weight-sigmoid-ce-sum", frozen_conv_weight_net, (3, 2, 4, 4), "ce", "sum"),
    # parameter-free modules without registered derivatives: the autograd fallback
    Setting("mlp-elu-ce-mean", mlp(nn.ELU), (4, 6)),
    Setting("mlp-gelu-mse-sum", mlp(nn.GELU), (3, 6), "mse", "sum"),
    Setting("mlp-softplus-ce-sum", mlp(nn.Softplus), (4, 6), "ce", "sum"),
    Setting("mlp-silu-mse-mean", mlp(nn.SiLU), (3, 6), "mse", "mean"),
    Setting("mlp-cube-ce-mean", mlp(Cube), (4, 6)),
    Setting("conv2d-elu-ce-sum", fallback_conv_net(nn.ELU), (3, 2, 4, 4), "ce", "sum"),
    Setting("conv2d-gelu-mse-mean", fallback_conv_net(nn.GELU), (2, 2, 4, 4), "mse", "mean"),
    Setting("conv2d-silu-ce-mean", fallback_conv_net(nn.SiLU), (3, 2, 4, 4)),
    Setting("conv2d-cube-mse-sum", fallback_conv_net(Cube), (2, 2, 4, 4), "mse", "sum"),
    # residual connections and tensors read by several modules
    Setting(
        "residual-mlp-tanh-sigmoid-ce-mean",
        lambda: ResidualMLP(nn.Tanh, nn.Sigmoid),
        (4, 6),
    ),
    Setting(
        "residual-mlp-relu-mse-sum",
        lambda: ResidualMLP(nn.ReLU, nn.Identity),
        (3, 6),
        "mse",
        "sum",
    ),
    Setting(
        "residual-mlp-elu-softplus-ce-sum",
        lambda: ResidualMLP(nn.ELU, nn.Softplus),
        (3, 6),
        "ce",
        "sum",
    ),
    Setting(
        "residual-conv-tanh-ce-sum", lambda: ResidualConvNet(nn.Tanh), (3, 2, 4, 4), "ce", "sum"
    ),
    Setting("residual-conv-relu-mse-mean", lambda: ResidualConvNet(nn.ReLU), (2, 2, 4, 4), "mse"),
    Setting("shared-input-sub-tanh-ce-mean", SharedInput, (4, 6)),
    # float32
    Setting("linear-ce-mean-float32", _linear, (3, 6), dtype=F32),
    Setting("mlp-sigmoid-mse-mean-float32", mlp(nn.Sigmoid), (3, 6), "mse", "mean", F32),
    Setting(
        "conv2d-ce-sum-float32",
        conv2d_net(lambda: nn.Conv2d(2, 3, 3), 27, nn.ReLU),
        (2, 2, 5, 5),
        "ce",
        "sum",
        F32,
    ),
]

SETTING_IDS = [setting.id for setting in SETTINGS]
assert len(set(SETTING_IDS)) == len(SETTING_IDS), "setting ids must be unique"


def kronecker_layers(model: nn.Module) -> dict:
    """The Linear and Conv layers of a model by name (KFAC, KFLR and KFRA apply to them)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


@functools.lru_cache(maxsize=None)
def reference_of(setting: Setting, quantity: str):
    """A reference quantity of a setting, computed once per test session.

    Args:
        setting: The case, built with seed 0.
        quantity: Name of a function in ``reference`` taking ``(model, lossfunc, X, y)``.

    Returns:
        What that function returns; shared between tests, so never modify it.
    """
    import reference

    return getattr(reference, quantity)(*setting.build())


def run_extended(setting: Setting, *extensions, seed: int = 0, debug: bool = False) -> dict:
    """Build a setting, extend model and loss, and run one backward pass with extensions.

    Args:
        setting: The case.
        *extensions: Extension instances passed to ``backpack``.
        seed: Seed of ``setting.build``; sampling extensions draw from the global generator
            as it is left after building.
        debug: Passed to ``extend`` and ``backpack``.

    Returns:
        ``{name: parameter}`` of the extended model after the backward pass, all parameters
        (also those with ``requires_grad=False``).
    """
    from backpack_core import backpack, extend

    model, lossfunc, X, y = setting.build(seed)
    model = extend(model, debug=debug)
    lossfunc = extend(lossfunc, debug=debug)
    loss = lossfunc(model(X), y)
    with backpack(*extensions, debug=debug):
        loss.backward()
    return dict(model.named_parameters())


def module_call(make: Callable[[], nn.Module], shape: Tuple[int, ...], seed: int = 0):
    """One float64 call of a fresh module on random input, kept whole as the engine would.

    Returns:
        ``(module, x, output, io)``: ``x`` still requires gradients, ``io`` holds the
        detached input and output and what the module's registered derivatives capture.
    """
    from backpack_core.derivatives import derivatives_for
    from backpack_core.derivatives.io import ModuleIO

    torch.manual_seed(seed)
    module = make().double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    output = module(x)
    derivatives = derivatives_for(module)
    extra = derivatives.capture(module, x, output) if derivatives is not None else None
    return module, x, output, ModuleIO(module, x.detach(), output.detach(), extra=extra)
