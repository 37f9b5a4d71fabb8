"""Print which DeepOBS problems BackOBS supports, and why the others are not.

Usage: ``python example/supported.py``
"""

import backobs


def main():
    """Print the support table and the counts."""
    print(backobs.format_support_table())
    print(
        f"\n{len(backobs.SUPPORTED)} supported, {len(backobs.UNSUPPORTED)} not supported. "
        "l2 regularization is not supported either: construct regularized problems with "
        "weight decay 0 (runner: --l2_reg 0.0)."
    )


if __name__ == "__main__":
    main()
