"""What a DeepOBS epoch costs with each data loader, against a plain torch loop on tensors.

For each problem (synthetic data, one torch thread, batch size 128, SGD, no extensions):

- ``deepobs``: one more epoch of a BackOBS run with DeepOBS's per-image loaders
  (``--data-loader deepobs``): training steps plus DeepOBS's evaluation of the train-eval,
  validation and test sets, i.e. (run with E+1 epochs) - (run with E epochs), with the
  same caps on steps and evaluation batches in both;
- ``tensor``: the same with the tensor data path (the default);
- ``plain``: the same steps and evaluations written as a plain torch loop over float
  tensors already in memory (the problem's own net and loss; random index order, no
  results file, no step log): the compute the epoch cannot do without.

Then a sweep worker's view (``--sweep-runs N``): N runs of one whole epoch of mnist_logreg
one after another in this process, as a worker runs them, with each loader; the tensor
path decodes the data in the first run and finds them in its cache in the others. Runs
per minute.

Then, on cifar10_3c3d, the loader's share of a training step: the seconds of ``next()`` on
the training iterator (index, augmentation, ToTensor, Normalize) against the whole step
(batch, forward, backward, SGD step), over ``--share-steps`` steps.

CPU seconds of this process (``time.process_time``; one thread, so close to wall-clock
seconds on an idle machine, and less disturbed by other work on a busy one) are reported
beside wall-clock seconds. Not a test: ``python benchmark/data_path.py`` (add
``--quick`` for a smoke run) and copy the table into benchmark/RESULTS.md.
"""

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# (problem, steps per epoch, evaluation batches per set); None = DeepOBS's whole epoch.
PROBLEMS = (
    ("mnist_logreg", None, None),
    ("mnist_2c2d", 60, 20),
    ("cifar10_3c3d", 40, 15),
)
BATCH_SIZE = 128


class Clock:
    """Wall-clock and CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_seconds(problem, loader, epochs, steps, eval_batches, output_dir):
    """Seconds of a whole BackOBS run (set-up, training, evaluation, results)."""
    from backobs import runs

    run = runs.Run(
        problem,
        "sgd",
        {"lr": 0.01},
        seed=42,
        batch_size=BATCH_SIZE,
        num_epochs=epochs,
        steps_per_epoch=steps,
        eval_batches=eval_batches,
        synthetic_data=True,
        output_dir=output_dir,
        data_loader=loader,
    )
    with Clock() as clock, contextlib.redirect_stdout(io.StringIO()):
        outcome = runs.execute(run, verbose=False)
    assert outcome["status"] == "finished", outcome
    return clock


def epoch_cost(problem, loader, steps, eval_batches, repeats):
    """One more epoch of a run: the median over repeats of (E=2) - (E=1), after a warm-up.

    Each run starts with an empty cache of decoded splits (it decodes its data, as a run in
    a new process does) and writes into a fresh results folder.
    """
    from backobs.adapter import tensor_data

    def seconds(epochs):
        tensor_data.clear_cache()
        with tempfile.TemporaryDirectory() as output_dir:
            return run_seconds(problem, loader, epochs, steps, eval_batches, output_dir)

    seconds(1)  # warm-up: lazy imports and first allocations are no epoch's cost
    walls, cpus = [], []
    for _ in range(repeats):
        one, two = seconds(1), seconds(2)
        walls.append(two.wall - one.wall)
        cpus.append(two.cpu - one.cpu)
    return statistics.median(walls), statistics.median(cpus)


def runs_per_minute(loader, count):
    """``count`` one-epoch mnist_logreg runs in this process (a worker's life), per minute."""
    from backobs.adapter import tensor_data

    tensor_data.clear_cache()
    with tempfile.TemporaryDirectory() as output_dir:
        started = time.perf_counter()
        for seed in range(count):
            run_seconds("mnist_logreg", loader, 1, None, None, os.path.join(output_dir, str(seed)))
        return 60 * count / (time.perf_counter() - started)


def plain_epoch(problem, steps, eval_batches, repeats):
    """A training epoch and three evaluations as a plain torch loop on float tensors.

    The median over ``repeats`` epochs, after a warm-up epoch.
    """
    from backobs import get_problem_class
    from backobs.adapter import data

    data.use_synthetic_data(True)
    torch.manual_seed(0)
    tproblem = get_problem_class(problem)(batch_size=BATCH_SIZE)
    tproblem.set_up()
    train = tproblem.data._train_dataloader.dataset
    test = tproblem.data._test_dataloader.dataset
    transform_mean_std = _normalisation(train.transform)

    def as_floats(dataset, count):
        images, labels = dataset.items(torch.arange(count))
        images = images.float().div(255)
        if transform_mean_std is not None:
            mean, std = transform_mean_std
            images = images.sub(mean.view(-1, 1, 1)).div(std.view(-1, 1, 1))
        return images, labels

    train_steps = steps or len(tproblem.data._train_dataloader)
    eval_count = (eval_batches or len(tproblem.data._test_dataloader)) * BATCH_SIZE
    train_x, train_y = as_floats(train, min(len(train), max(train_steps * BATCH_SIZE, eval_count)))
    test_x, test_y = as_floats(test, eval_count)
    net, loss_function = tproblem.net, torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    clocks = [_plain_epoch(net, loss_function, optimizer, train_x, train_y, test_x, test_y,
                           train_steps, eval_count) for _ in range(repeats + 1)][1:]  # fmt: skip
    return (
        statistics.median(clock.wall for clock in clocks),
        statistics.median(clock.cpu for clock in clocks),
    )


def _plain_epoch(net, loss_function, optimizer, train_x, train_y, test_x, test_y, train_steps,
                 eval_count):  # fmt: skip
    with Clock() as clock:
        net.train()
        order = torch.randperm(len(train_x))
        for step in range(train_steps):
            index = order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_function(net(train_x[index]), train_y[index])
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            for images, labels in ((train_x, train_y), (test_x, test_y), (test_x, test_y)):
                for start in range(0, eval_count, BATCH_SIZE):
                    outputs = net(images[start : start + BATCH_SIZE])
                    loss_function(outputs, labels[start : start + BATCH_SIZE]).item()
                    (outputs.argmax(1) == labels[start : start + BATCH_SIZE]).float().mean()
    return clock


def _normalisation(transform):
    from torchvision import transforms as T

    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    for step in steps:
        if isinstance(step, T.Normalize):
            return torch.tensor(step.mean), torch.tensor(step.std)
    return None


def loader_share(steps):
    """On cifar10_3c3d: seconds of next() on the training iterator against whole steps."""
    from backobs import get_problem_class
    from backobs.adapter import data, tensor_data

    data.use_synthetic_data(True)
    torch.manual_seed(0)
    tproblem = get_problem_class("cifar10_3c3d")(batch_size=BATCH_SIZE)
    tproblem.set_up()
    tensor_data.attach(tproblem, announce=lambda line: print(line, file=sys.stderr))
    tproblem.data._train_dataloader.split.fill_all()  # decoding is not the step's cost
    optimizer = torch.optim.SGD(tproblem.net.parameters(), lr=0.01)
    tproblem.train_init_op()
    loading = stepping = 0.0
    for _ in range(steps):
        started = time.process_time()
        batch = next(tproblem._iterator)
        loaded = time.process_time()
        images, labels = batch
        optimizer.zero_grad()
        outputs = tproblem.net(images)
        loss = tproblem.loss_function()(outputs, labels)
        loss.backward()
        optimizer.step()
        done = time.process_time()
        loading += loaded - started
        stepping += done - started
    return loading / steps, stepping / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny caps: a smoke run")
    parser.add_argument(
        "--share-steps", type=int, default=30, help="steps of the loader's share (0: skip)"
    )
    parser.add_argument("--sweep-runs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="medians over this many")
    parser.add_argument("--problems", nargs="+", default=[p for p, _, _ in PROBLEMS])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for problem, steps, eval_batches in PROBLEMS:
        if problem not in args.problems:
            continue
        if args.quick:
            steps, eval_batches = 3, 2
        repeats = 1 if args.quick else args.repeats
        plain = plain_epoch(problem, steps, eval_batches, repeats)
        tensor = epoch_cost(problem, "tensor", steps, eval_batches, repeats)
        deepobs = epoch_cost(problem, "deepobs", steps, eval_batches, repeats)
        rows.append((problem, steps, eval_batches, plain, tensor, deepobs))
        print(f"{problem}: plain {plain}, tensor {tensor}, deepobs {deepobs}", file=sys.stderr)
    print(
        f"torch {torch.__version__}, 1 thread, batch {BATCH_SIZE}, synthetic data, sgd, "
        f"no extensions; load average at the end {os.getloadavg()[0]:.1f}\n"
    )
    print("| problem | steps / eval batches per set | plain loop | tensor | deepobs "
          "| tensor / plain | deepobs / plain |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for problem, steps, eval_batches, plain, tensor, deepobs in rows:
        caps = f"{steps or 'all'} / {eval_batches or 'all'}"
        print(
            f"| {problem} | {caps} | {plain[1]:.3g} s | {tensor[1]:.3g} s | {deepobs[1]:.3g} s "
            f"| {tensor[1] / plain[1]:.2f} | {deepobs[1] / plain[1]:.1f} |"
        )
    print(
        f"\n(CPU seconds of one more epoch, medians over {1 if args.quick else args.repeats} "
        "repeats after a warm-up; wall-clock seconds in the log on stderr.)\n"
    )
    if args.sweep_runs:
        count = 2 if args.quick else args.sweep_runs
        rates = {loader: runs_per_minute(loader, count) for loader in ("deepobs", "tensor")}
        print(
            f"A worker's {count} one-epoch mnist_logreg runs: {rates['deepobs']:.1f} runs per "
            f"minute with DeepOBS's loaders, {rates['tensor']:.1f} with the tensor path "
            f"({rates['tensor'] / rates['deepobs']:.1f}x; wall-clock).\n"
        )
    if args.share_steps:
        steps = min(3, args.share_steps) if args.quick else args.share_steps
        loading, stepping = loader_share(steps)
        print(
            f"cifar10_3c3d, tensor path: next() {1000 * loading:.2f} ms of a "
            f"{1000 * stepping:.1f} ms training step ({100 * loading / stepping:.1f} %), "
            f"over {steps} steps."
        )


if __name__ == "__main__":
    main()
