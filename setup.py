"""Packaging of BackOBS: the DeepOBS adapter ``backobs`` and its engine ``backpack_core``."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

INSTALL_REQUIRES = [
    # The index's default torch build; it runs on the CPU and, unlike a CPU-only
    # wheel, works together with torchvision's compiled operators.
    "torch>=2.0",
    "torchvision",
    "deepobs==1.1.2",
    # DeepOBS 1.1.2 imports scipy (truncated normal init) without declaring it.
    "scipy",
    "numpy",
    "tqdm",
    "matplotlib",
    # The benchmark layer: sweeps run on Dask (a local cluster or a running scheduler),
    # sweep files are YAML, reports are pandas tables.
    "dask[distributed]",
    "pyyaml",
    "pandas",
]

EXTRAS_REQUIRE = {
    # curvlinops: an independent reference for the Kronecker factors' conventions.
    "test": ["pytest", "pytest-cov", "coveralls", "ruff", "curvlinops-for-pytorch==3.0.1"],
    "docs": ["sphinx"],
    # Peers measured side by side in benchmark/; never needed by the package.
    "bench": [
        "backpack-for-pytorch==1.7.1",
        "opacus",
        "curvlinops-for-pytorch==3.0.1",
        "asdfghjkl==0.1a5",
    ],
}

setup(
    name="backobs",
    version="0.1.0",
    description="BackPACK-style backprop extensions on DeepOBS test problems",
    long_description=(HERE / "README.org").read_text(encoding="utf-8"),
    long_description_content_type="text/plain",
    author="The BackOBS developers",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["backobs", "backobs.*", "backpack_core", "backpack_core.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["backobs = backobs.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
