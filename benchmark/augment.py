"""Time the batched augmentation (issue 22) against torchvision's per-image PIL path.

DeepOBS's CIFAR-10 training augmentation on one batch of 128 images of 3 x 32 x 32, on one
CPU thread: :class:`backobs.adapter.augment.Augmentation` on a uint8 batch, against
``Compose([Pad(2), RandomCrop(32), RandomHorizontalFlip(), ColorJitter(...)])`` applied to
each image as a PIL image (as DeepOBS's data sets do, ``Image.fromarray`` included and not).
ToTensor/Normalize are left out of both. Prints wall times (median, minimum) and the median CPU
time per batch in ms.

Run: ``python benchmark/augment.py [--batch-size 128] [--repeats 200] [--threads 1]``.
"""

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from backobs.adapter.augment import Augmentation, adjust, crop, horizontal_flip, pad

BRIGHTNESS, CONTRAST, SATURATION = 63.0 / 255.0, (0.2, 1.8), (0.5, 1.5)


def times_ms(fn, repeats):
    """Median wall time, minimum wall time and median CPU time of ``fn()``, in ms.

    On a shared machine the wall time includes waiting for a core; the CPU time of this
    thread (all of the work with one torch thread) and the minimum are less disturbed.
    """
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return 1e3 * float(np.median(wall)), 1e3 * min(wall), 1e3 * float(np.median(cpu))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator
    )
    arrays = [np.ascontiguousarray(a) for a in images.permute(0, 2, 3, 1).numpy()]
    pil_images = [Image.fromarray(a) for a in arrays]

    ours = Augmentation(
        padding=2,
        crop_size=(32, 32),
        flip_p=0.5,
        brightness=BRIGHTNESS,
        contrast=CONTRAST,
        saturation=SATURATION,
    )
    torchvision_chain = transforms.Compose(
        [
            transforms.Pad(padding=2),
            transforms.RandomCrop(size=(32, 32)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(
                brightness=BRIGHTNESS, saturation=list(SATURATION), contrast=list(CONTRAST)
            ),
        ]
    )
    params = ours.sample_parameters(args.batch_size, (32, 32), generator)
    padded = pad(images, 2)
    cropped = crop(padded, params.tops, params.lefts, 32)
    j = params.jitter

    rows = [
        ("backobs Augmentation (pad+crop+flip+jitter)", lambda: ours(images, generator)),
        ("  sample_parameters", lambda: ours.sample_parameters(args.batch_size, (32, 32))),
        ("  pad", lambda: pad(images, 2)),
        ("  crop", lambda: crop(padded, params.tops, params.lefts, 32)),
        ("  horizontal_flip", lambda: horizontal_flip(cropped, params.flips)),
        (
            "  adjust (jitter)",
            lambda: adjust(cropped, j.brightness, j.contrast, j.saturation, j.orders),
        ),
        (
            "torchvision per PIL image (from PIL images)",
            lambda: [torchvision_chain(im) for im in pil_images],
        ),
        (
            "torchvision per PIL image (incl. Image.fromarray)",
            lambda: [torchvision_chain(Image.fromarray(a)) for a in arrays],
        ),
    ]
    print(
        f"batch {args.batch_size} x 3 x 32 x 32 uint8, {torch.get_num_threads()} thread(s), "
        f"{args.repeats} repeats"
    )
    print(f"{'':<52s} {'wall median':>12s} {'wall min':>10s} {'CPU median':>11s}")
    for name, fn in rows:
        median, best, cpu = times_ms(fn, args.repeats)
        print(f"{name:<52s} {median:9.3f} ms {best:7.3f} ms {cpu:8.3f} ms")


if __name__ == "__main__":
    main()
