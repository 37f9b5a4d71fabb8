"""Batched augmentation (issue 22), backobs.adapter.augment.

Values as torchvision's on PIL images, distributions as its transforms', the random ops as
the fixed ones with the parameters they draw, and bad input.

The contract is at most 1 uint8 unit from torchvision's functional ops on PIL images (crop,
flip and pad exactly equal). The emulation of Pillow's blend is bit-exact with the Pillow of
this environment, so the tests also bound the fraction of differing values (1 in 1000): a
systematic drift (another rounding) fails even when it stays within 1 unit.
"""

import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from scipy import stats
from torchvision import transforms

from backobs.adapter import augment
from backobs.adapter.augment import (
    Augmentation,
    adjust,
    color_jitter,
    crop,
    horizontal_flip,
    jitter_range,
    pad,
    random_crop,
    random_horizontal_flip,
    sample_crop_offsets,
    sample_flips,
    sample_jitter,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# DeepOBS's CIFAR-10/100 ColorJitter.
BRIGHTNESS, CONTRAST, SATURATION = 63.0 / 255.0, (0.2, 1.8), (0.5, 1.5)
RANGES = {
    "brightness": (1 - BRIGHTNESS, 1 + BRIGHTNESS),
    "contrast": CONTRAST,
    "saturation": SATURATION,
}
OPS = ("brightness", "contrast", "saturation")
PIL_OPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)

# Tail probability of the statistical tests (fixed seeds: deterministic outcomes).
TAIL = 1e-4


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def make_images(n, channels=3, size=(8, 8), seed=0):
    """Random uint8 images with hard cases: dark, bright, black/white, one colour, flat."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels) + tuple(size), generator=g, dtype=torch.uint8)
    k = n // 8
    images[:k] //= 8  # dark
    images[k : 2 * k] = 255 - images[k : 2 * k] // 8  # bright
    images[2 * k : 3 * k] = (images[2 * k : 3 * k] > 127).to(torch.uint8) * 255  # saturated
    if channels == 3:
        images[3 * k : 4 * k, 1:] = 0  # pure red tones
    flat = torch.randint(0, 256, (k, channels, 1, 1), generator=g, dtype=torch.uint8)
    images[4 * k : 5 * k] = flat.expand(k, channels, *size)  # constant images
    return images


def to_pil(image):
    """uint8 [C, H, W] -> an RGB or L PIL image, as DeepOBS's data sets hold them."""
    array = image.cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def from_pil(image):
    """PIL image -> uint8 [C, H, W]."""
    array = np.array(image)
    return torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1)


def uniform_factors(n, bounds, seed):
    """Factors uniform on ``bounds`` with the extremes mixed in (a third of them)."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.empty(n).uniform_(*bounds, generator=g)
    extreme = torch.tensor(bounds, dtype=torch.float32)[torch.randint(0, 2, (n,), generator=g)]
    return torch.where(torch.rand(n, generator=g) < 1 / 3, extreme, factors)


def random_orders(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 4), generator=g).argsort(dim=1)


def reference_jitter(images, factors, orders):
    """Torchvision's functional ops on PIL images, per image, in each image's order."""
    out = []
    for i, image in enumerate(images):
        pil = to_pil(image)
        for op in orders[i].tolist():
            if op < 3 and factors[op] is not None:
                pil = PIL_OPS[op](pil, float(factors[op][i]))
        out.append(from_pil(pil))
    return torch.stack(out)


def assert_close_to_pil(result, expected):
    """At most 1 uint8 unit everywhere (the contract), and rarely any difference."""
    assert result.dtype == torch.uint8
    diff = (result.cpu().to(torch.int16) - expected.to(torch.int16)).abs()
    assert diff.max().item() <= 1
    assert (diff > 0).double().mean().item() <= 1e-3


def generator(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Fixed-parameter ops against torchvision on PIL images
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "padding, fill",
    [(2, 0), ((1, 3), 7), ([1, 2, 3, 4], (10, 20, 30)), ([3], 255), (0, 0)],
)
def test_pad_equals_torchvision(device, padding, fill):
    images = make_images(16, size=(5, 7))
    result = pad(images.to(device), padding, fill)
    expected = torch.stack([from_pil(F.pad(to_pil(im), padding, fill)) for im in images])
    assert result.device.type == device and result.dtype == torch.uint8
    assert torch.equal(result.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(4, 4), (3, 5), 6, (9, 8)])
def test_crop_equals_torchvision(device, size):
    n, (H, W) = 64, (9, 8)
    images = make_images(n, size=(H, W), seed=1)
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(1)
    tops = torch.randint(0, H - h + 1, (n,), generator=g)
    lefts = torch.randint(0, W - w + 1, (n,), generator=g)
    result = crop(images.to(device), tops.to(device), lefts.to(device), size)
    expected = torch.stack(
        [
            from_pil(F.crop(to_pil(im), int(t), int(left), h, w))
            for im, t, left in zip(images, tops, lefts)
        ]
    )
    assert result.device.type == device
    assert torch.equal(result.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_horizontal_flip_equals_torchvision(device, channels):
    images = make_images(32, channels=channels, size=(5, 6), seed=2)
    flags = torch.arange(32) % 3 == 0
    result = horizontal_flip(images.to(device), flags.to(device))
    expected = torch.stack(
        [from_pil(F.hflip(to_pil(im))) if f else im for im, f in zip(images, flags)]
    )
    assert torch.equal(result.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_crop_with_flips_is_crop_then_flip(device):
    images = make_images(40, size=(7, 9), seed=3).to(device)
    g = torch.Generator().manual_seed(3)
    tops, lefts = torch.randint(0, 3, (40,), generator=g), torch.randint(0, 4, (40,), generator=g)
    flips = torch.rand(40, generator=g) < 0.5
    fused = crop(images, tops, lefts, (5, 6), flips=flips)
    assert torch.equal(fused, horizontal_flip(crop(images, tops, lefts, (5, 6)), flips))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_single_colour_op_matches_pil(device, op):
    n = 600
    images = make_images(n, size=(8, 8), seed=4)
    factors = [None, None, None]
    factors[OPS.index(op)] = uniform_factors(n, RANGES[op], seed=4)
    result = adjust(images.to(device), *factors)
    assert result.device.type == device
    assert_close_to_pil(result, reference_jitter(images, factors, random_orders(n, 0)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_colour_op_outside_deepobs_ranges_matches_pil(device, op):
    """Wider factors (0 to 3): black, grey, heavy clipping."""
    n = 300
    images = make_images(n, size=(6, 6), seed=5)
    factors = [None, None, None]
    factors[OPS.index(op)] = uniform_factors(n, (0.0, 3.0), seed=5)
    result = adjust(images.to(device), *factors)
    assert_close_to_pil(result, reference_jitter(images, factors, random_orders(n, 0)))


@pytest.mark.parametrize("device", DEVICES)
def test_composed_jitter_with_fixed_orders_matches_pil(device):
    """All three ops in all 24 orders (each several times), DeepOBS's ranges and extremes."""
    perms = torch.tensor(list(itertools.permutations(range(4))))
    orders = perms.repeat(40, 1)
    n = orders.shape[0]
    images = make_images(n, size=(8, 8), seed=6)
    factors = [uniform_factors(n, RANGES[op], seed=10 + i) for i, op in enumerate(OPS)]
    result = adjust(images.to(device), *factors, orders.to(device))
    assert_close_to_pil(result, reference_jitter(images, factors, orders))


@pytest.mark.parametrize("device", DEVICES)
def test_composed_jitter_with_some_ops_unset_matches_pil(device):
    n = 240
    images = make_images(n, size=(6, 6), seed=7)
    orders = random_orders(n, 7)
    factors = [uniform_factors(n, RANGES["brightness"], 7), None, uniform_factors(n, SATURATION, 8)]
    result = adjust(images.to(device), *factors, orders.to(device))
    assert_close_to_pil(result, reference_jitter(images, factors, orders))


@pytest.mark.parametrize("device", DEVICES)
def test_greyscale_images_match_pil(device):
    """1-channel images behave as PIL "L" images (saturation is the identity)."""
    n = 240
    images = make_images(n, channels=1, size=(7, 7), seed=8)
    orders = random_orders(n, 8)
    factors = [uniform_factors(n, RANGES[op], seed=20 + i) for i, op in enumerate(OPS)]
    result = adjust(images.to(device), *factors, orders.to(device))
    assert_close_to_pil(result, reference_jitter(images, factors, orders))
    assert torch.equal(adjust(images.to(device), None, None, factors[2]).cpu(), images)


def test_large_images_contrast_mean_matches_pil():
    """The contrast mean over a larger image (sum in double beyond float32's exact range)."""
    images = make_images(8, size=(300, 280), seed=9)
    factors = [None, uniform_factors(8, CONTRAST, 9), None]
    result = adjust(images, *factors)
    assert_close_to_pil(result, reference_jitter(images, factors, random_orders(8, 0)))


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_apply_matches_torchvision_chain(device):
    """Pad, crop, flip, jitter with fixed parameters against torchvision's functional ops."""
    n = 256
    images = make_images(n, size=(32, 32), seed=11)
    aug = Augmentation(
        padding=2,
        crop_size=(32, 32),
        flip_p=0.5,
        brightness=BRIGHTNESS,
        contrast=list(CONTRAST),
        saturation=list(SATURATION),
    )
    params = aug.sample_parameters(n, (32, 32), generator("cpu", 11))
    result = aug.apply(images.to(device), params)
    j = params.jitter
    expected = []
    for i, image in enumerate(images):
        pil = F.pad(to_pil(image), 2)
        pil = F.crop(pil, int(params.tops[i]), int(params.lefts[i]), 32, 32)
        if params.flips[i]:
            pil = F.hflip(pil)
        for op in j.orders[i].tolist():
            if op < 3:
                pil = PIL_OPS[op](pil, float((j.brightness, j.contrast, j.saturation)[op][i]))
        expected.append(from_pil(pil))
    assert result.shape == (n, 3, 32, 32) and result.device.type == device
    assert_close_to_pil(result, torch.stack(expected))


# --------------------------------------------------------------------------------------------
# Parameter distributions
# --------------------------------------------------------------------------------------------


def chi_square_uniform(counts):
    """Chi-square statistic of counts against the uniform distribution, and its threshold."""
    counts = np.asarray(counts, dtype=np.float64)
    expected = counts.sum() / counts.size
    statistic = ((counts - expected) ** 2 / expected).sum()
    return statistic, stats.chi2.ppf(1 - TAIL, counts.size - 1)


@pytest.mark.parametrize("device", DEVICES)
def test_crop_offsets_uniform_over_all_positions(device):
    n, (H, W), (h, w) = 20000, (6, 7), (3, 3)
    tops, lefts = sample_crop_offsets(n, (H, W), (h, w), generator(device, 0), device)
    assert tops.device.type == device and tops.dtype == torch.int64
    assert int(tops.min()) == 0 and int(tops.max()) == H - h
    assert int(lefts.min()) == 0 and int(lefts.max()) == W - w
    cells = (tops * (W - w + 1) + lefts).cpu()
    counts = torch.bincount(cells, minlength=(H - h + 1) * (W - w + 1))
    assert counts.numel() == (H - h + 1) * (W - w + 1)
    statistic, threshold = chi_square_uniform(counts.numpy())
    assert statistic < threshold


def test_full_size_crop_draws_nothing():
    g = generator("cpu", 0)
    state = g.get_state()
    tops, lefts = sample_crop_offsets(5, (4, 4), 4, g)
    assert torch.equal(g.get_state(), state)
    assert tops.tolist() == lefts.tolist() == [0] * 5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.5, 0.1, 0.0, 1.0])
def test_flip_rate_is_p(device, p):
    n = 20000
    flips = sample_flips(n, p, generator(device, 1), device)
    assert flips.dtype == torch.bool and flips.device.type == device
    k = int(flips.sum())
    low, high = stats.binom.ppf([TAIL / 2, 1 - TAIL / 2], n, p)
    assert low <= k <= high


@pytest.mark.parametrize("device", DEVICES)
def test_jitter_factors_uniform_on_ranges(device):
    n = 20000
    params = sample_jitter(
        n, BRIGHTNESS, list(CONTRAST), list(SATURATION), 0, generator(device, 2), device
    )
    for op in OPS:
        factors = getattr(params, op)
        low, high = RANGES[op]
        assert factors.dtype == torch.float32 and factors.device.type == device
        assert low <= float(factors.min()) and float(factors.max()) <= high
        cdf = stats.uniform(loc=low, scale=high - low).cdf
        assert stats.kstest(factors.cpu().double().numpy(), cdf).pvalue > TAIL


@pytest.mark.parametrize("device", DEVICES)
def test_jitter_orders_uniform_over_permutations(device):
    n = 24000
    orders = sample_jitter(n, 0.5, generator=generator(device, 3), device=device).orders
    assert orders.shape == (n, 4) and orders.dtype == torch.int64
    assert torch.equal(orders.sort(dim=1).values.cpu(), torch.arange(4).expand(n, 4))
    index = {perm: i for i, perm in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([index[tuple(row)] for row in orders.tolist()], minlength=24)
    assert counts.size == 24
    statistic, threshold = chi_square_uniform(counts)
    assert statistic < threshold


def test_unset_jitter_ops_draw_no_factors():
    params = sample_jitter(10, brightness=0, contrast=(1, 1), saturation=SATURATION)
    assert params.brightness is None and params.contrast is None
    assert params.saturation.shape == (10,)


# --------------------------------------------------------------------------------------------
# Random ops = fixed ops with the parameters they draw
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_random_ops_equal_fixed_ops_with_drawn_parameters(device):
    n = 64
    images = make_images(n, size=(10, 10), seed=12).to(device)
    tops, lefts = sample_crop_offsets(n, (10, 10), (6, 7), generator(device, 5), device)
    assert torch.equal(
        random_crop(images, (6, 7), generator(device, 5)), crop(images, tops, lefts, (6, 7))
    )
    flags = sample_flips(n, 0.3, generator(device, 6), device)
    assert torch.equal(
        random_horizontal_flip(images, 0.3, generator(device, 6)), horizontal_flip(images, flags)
    )
    ranges = (BRIGHTNESS, CONTRAST, SATURATION)
    j = sample_jitter(n, *ranges, generator=generator(device, 7), device=device)
    assert torch.equal(
        color_jitter(images, *ranges, generator=generator(device, 7)),
        adjust(images, j.brightness, j.contrast, j.saturation, j.orders),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_call_equals_apply_of_sampled_parameters(device):
    n = 64
    images = make_images(n, size=(12, 12), seed=13).to(device)
    aug = Augmentation(padding=(1, 2), crop_size=10, flip_p=0.5, brightness=0.3, saturation=0.4)
    params = aug.sample_parameters(n, (12, 12), generator(device, 8), device)
    result = aug(images, generator(device, 8))
    assert result.shape == (n, 3, 10, 10) and result.dtype == torch.uint8
    assert result.device.type == device
    assert torch.equal(result, aug.apply(images, params))
    assert params.jitter.contrast is None


@pytest.mark.parametrize("device", DEVICES)
def test_default_generator_of_the_device(device):
    images = make_images(16, size=(8, 8), seed=14).to(device)
    aug = Augmentation(padding=2, crop_size=8, flip_p=0.5, contrast=CONTRAST)
    torch.manual_seed(0)
    first = aug(images)
    torch.manual_seed(0)
    assert torch.equal(aug(images), first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_with_cuda_images():
    images = make_images(16, size=(8, 8), seed=15)
    aug = Augmentation(crop_size=6, flip_p=0.5, brightness=0.2)
    on_cuda = aug(images.cuda(), generator("cpu", 9))
    assert on_cuda.device.type == "cuda"
    assert torch.equal(on_cuda.cpu(), aug(images, generator("cpu", 9)))


def test_inputs_left_unchanged():
    images = make_images(16, size=(8, 8), seed=16)
    copy = images.clone()
    Augmentation(padding=2, crop_size=8, flip_p=1.0, brightness=0.5, contrast=0.5)(images)
    adjust(images, torch.full((16,), 2.0))
    horizontal_flip(images, torch.ones(16, dtype=torch.bool))
    assert torch.equal(images, copy)


# --------------------------------------------------------------------------------------------
# Mapping from torchvision's arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, 0.3, 1.5, 63.0 / 255.0, (0.2, 1.8), [0.5, 1.5], (1, 1), (0, 0), (0.0, 2.0)],
)
def test_jitter_range_as_color_jitter(value):
    jitter = transforms.ColorJitter(brightness=value, contrast=value, saturation=value)
    for name in OPS:
        assert jitter_range(value, name) == getattr(jitter, name)


def test_deepobs_augmentation_ranges():
    aug = Augmentation(
        padding=2,
        crop_size=(32, 32),
        flip_p=0.5,
        brightness=BRIGHTNESS,
        contrast=[0.2, 1.8],
        saturation=[0.5, 1.5],
    )
    jitter = transforms.ColorJitter(
        brightness=BRIGHTNESS, saturation=[0.5, 1.5], contrast=[0.2, 1.8]
    )
    assert (aug.brightness, aug.contrast, aug.saturation) == (
        jitter.brightness,
        jitter.contrast,
        jitter.saturation,
    )
    assert aug.crop_size == (32, 32) and aug.padded_size((32, 32)) == (36, 36)
    assert augment.padding_sides((1, 2)) == (1, 2, 1, 2)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda x: pad(x, 2),
        lambda x: crop(x, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), 2),
        lambda x: random_crop(x, 2),
        lambda x: horizontal_flip(x, torch.ones(2, dtype=torch.bool)),
        lambda x: random_horizontal_flip(x),
        lambda x: adjust(x, torch.ones(2)),
        lambda x: color_jitter(x, brightness=0.2),
        lambda x: Augmentation(padding=1)(x),
    ],
)
def test_non_uint8_and_wrong_dims_refused(call):
    with pytest.raises(TypeError, match="uint8"):
        call(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"4 dimensions \[N, C, H, W\]"):
        call(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        call(np.zeros((2, 3, 4, 4), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["reflect", "edge", "symmetric"])
def test_non_constant_padding_refused(mode):
    with pytest.raises(ValueError, match=f"padding_mode '{mode}' is not supported"):
        pad(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 2, padding_mode=mode)


@pytest.mark.parametrize(
    "padding, fill, error",
    [
        ((1, 2, 3), 0, ValueError),
        (-1, 0, ValueError),
        (1.5, 0, TypeError),
        (1, (1, 2), ValueError),
        (1, 300, ValueError),
    ],
)
def test_bad_padding_or_fill_refused(padding, fill, error):
    with pytest.raises(error):
        pad(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), padding, fill)


def test_hue_refused():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="hue"):
        color_jitter(images, brightness=0.2, hue=0.1)
    color_jitter(images, brightness=0.2, hue=0)  # unset: fine


def test_bad_parameters_refused():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="larger than input image size"):
        random_crop(images, 5)
    with pytest.raises(ValueError, match="offsets"):
        crop(images, torch.tensor([0, 2]), torch.tensor([0, 0]), 3)
    with pytest.raises(ValueError, match="one value per image"):
        crop(images, torch.tensor([0]), torch.tensor([0, 0]), 3)
    with pytest.raises(ValueError, match="permutation"):
        adjust(images, torch.ones(2), orders=torch.tensor([[0, 1, 2, 2], [0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="channels"):
        adjust(torch.zeros(2, 4, 4, 4, dtype=torch.uint8), torch.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        adjust(images, torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="flip"):
        Augmentation(flip_p=1.5)
    with pytest.raises(ValueError, match="non negative"):
        Augmentation(brightness=-0.1)
