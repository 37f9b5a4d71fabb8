"""Helpers shared by the sweep tests without a cluster: a tiny sweep file, the command line."""

import argparse
import json
import os

import yaml

from backobs.sweep import command as sweep_command
from backobs.sweep.execute import MANIFEST_NAME

TINY = {
    "batch_size": 4,
    "num_epochs": 1,
    "steps_per_epoch": 2,
    "eval_batches": 2,
    "synthetic_data": True,
}

DROP = object()
"""An override that leaves the key out of the sweep file."""


def spec_content(tmp_path, **overrides):
    """Two problems, sgd and kfac with two settings each, one seed, tiny runs."""
    content = {
        "problems": ["mnist_logreg", "quadratic_deep"],
        "optimizers": {"sgd": {"lr": [0.01, 0.1]}, "kfac": {"lr": [0.01, 0.1], "damping": 0.01}},
        "seeds": [42],
        "output_dir": str(tmp_path / "results"),
        **TINY,
    }
    content.update(overrides)
    return {key: value for key, value in content.items() if value is not DROP}


def write_spec(tmp_path, content, name="sweep.yaml"):
    """Write a sweep file (a dictionary as YAML, or a string as it is); return its path."""
    path = tmp_path / name
    text = yaml.safe_dump(content, sort_keys=False) if isinstance(content, dict) else content
    path.write_text(text)
    return str(path)


def parse_command_line(spec_path, *options):
    """``backobs sweep SPEC OPTIONS...`` parsed by the command's own parser."""
    parser = argparse.ArgumentParser()
    sweep_command.add_arguments(parser)
    return parser.parse_args([spec_path, *options])


def read_manifest(output_dir):
    """The manifest's records, one per line."""
    with open(os.path.join(output_dir, MANIFEST_NAME)) as stream:
        return [json.loads(line) for line in stream]
