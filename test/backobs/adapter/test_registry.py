"""The problem groups, the support table, lookup by name, and DeepOBS's runner lookup."""

import pytest

import backobs
from backobs.adapter import deepobs as _deepobs
from backobs.adapter.problems import default_l2_factor

NEW_PROBLEMS = [
    "fmnist_logreg",
    "svhn_3c3d",
    "cifar10_vgg16",
    "cifar10_vgg19",
    "cifar100_vgg16",
    "cifar100_vgg19",
    "cifar100_wrn164",
    "cifar100_wrn404",
]


def test_group_sizes():
    assert len(backobs.ALL) == 20
    assert len(set(backobs.ALL)) == 20
    assert len(backobs.SUPPORTED) == 15
    assert len(backobs.UNSUPPORTED) == 5
    assert set(backobs.SUPPORTED) | set(backobs.UNSUPPORTED) == set(backobs.ALL)


def test_unsupported_are_the_vaes_and_batchnorm_nets():
    names = {cls.__name__ for cls in backobs.UNSUPPORTED}
    assert names == {"mnist_vae", "fmnist_vae", "svhn_wrn164", "cifar100_wrn164", "cifar100_wrn404"}


def test_regularized_are_those_with_positive_default_l2():
    names = {cls.__name__ for cls in backobs.REGULARIZED}
    assert names == {
        "cifar10_3c3d",
        "cifar100_3c3d",
        "cifar100_allcnnc",
        "svhn_3c3d",
        "cifar10_vgg16",
        "cifar10_vgg19",
        "cifar100_vgg16",
        "cifar100_vgg19",
        "svhn_wrn164",
        "cifar100_wrn164",
        "cifar100_wrn404",
    }
    assert default_l2_factor(backobs.get_problem_class("cifar10_3c3d")) == 0.002
    assert default_l2_factor(backobs.get_problem_class("cifar10_vgg16")) == 5e-4


def test_support_table_matches_groups():
    table = backobs.SUPPORT_TABLE
    assert [row.name for row in table] == [cls.__name__ for cls in backobs.ALL]
    assert sum(row.supported for row in table) == 15
    for row in table:
        assert bool(row.reason) == (not row.supported)
    text = backobs.format_support_table()
    assert text.count("✔") == 15 and text.count("❌") == 5


def test_get_problem_class():
    assert backobs.get_problem_class("mnist_logreg") is _deepobs.testproblems.mnist_logreg
    assert backobs.get_problem_class("quadratic_deep").__module__ == "backobs.adapter.testproblems"
    with pytest.raises(ValueError, match="Known problems: .*mnist_logreg"):
        backobs.get_problem_class("mnist_resnet")


@pytest.mark.parametrize("name", NEW_PROBLEMS)
def test_new_problems_reachable_like_deepobs_runner_finds_them(name):
    # PTRunner.create_testproblem: getattr(deepobs.pytorch.testproblems, name), after the
    # explicit registration (importing backobs changes nothing in DeepOBS).
    backobs.register_problems()
    assert getattr(_deepobs.testproblems, name) is backobs.get_problem_class(name)
    assert issubclass(backobs.get_problem_class(name), _deepobs.testproblems.TestProblem)
