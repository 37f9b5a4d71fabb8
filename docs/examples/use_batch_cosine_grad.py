"""Use the walkthrough's ``BatchCosineGrad`` on a logistic regression of MNIST's shape.

Runs offline: the batch is random data of MNIST's shape (4 images of 1x28x28, 10 classes).

Examples:
    python docs/examples/use_batch_cosine_grad.py
    python docs/examples/use_batch_cosine_grad.py --stage scaffold --debug
"""

import argparse

import torch
from batch_cosine_grad import BatchCosineGrad, BatchCosineGradDummy, BatchCosineGradScaffold
from torch.nn import CrossEntropyLoss, Flatten, Linear, Sequential

from backpack_core import backpack, extend

STAGES = {
    "scaffold": BatchCosineGradScaffold,
    "dummy": BatchCosineGradDummy,
    "final": BatchCosineGrad,
}


def main():
    """Run one backward pass with the extension and print what it stored."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGES), default="final")
    parser.add_argument("--debug", action="store_true", help="backpack(..., debug=True)")
    args = parser.parse_args()

    torch.manual_seed(0)
    X, y = torch.rand(4, 1, 28, 28), torch.randint(10, (4,))
    model = extend(Sequential(Flatten(), Linear(784, 10)))
    lossfunc = extend(CrossEntropyLoss())

    loss = lossfunc(model(X), y)
    with backpack(STAGES[args.stage](), debug=args.debug):
        loss.backward()

    for name, param in model.named_parameters():
        cosine = param.batch_cosine
        print(name)
        print("  .grad.shape:        ", param.grad.shape)
        print("  .batch_cosine.shape:", getattr(cosine, "shape", cosine))
        if isinstance(cosine, torch.Tensor):
            for row in cosine.tolist():
                print("    " + " ".join(f"{value:+.3f}" for value in row))


if __name__ == "__main__":
    main()
