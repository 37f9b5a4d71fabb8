"""example/extend.py and extend_with_access_unreduced_loss.py print the original's lines."""

import re

EXPECTED_QUANTITIES = """\
dense.weight
  .grad.shape:              torch.Size([10, 784])
  .grad_batch.shape:        torch.Size([128, 10, 784])
  .variance.shape:          torch.Size([10, 784])
  .sum_grad_squared.shape:  torch.Size([10, 784])
  .batch_l2.shape:          torch.Size([128])
  .diag_ggn_mc.shape:       torch.Size([10, 784])
  .diag_ggn_exact.shape:    torch.Size([10, 784])
  .diag_h.shape:            torch.Size([10, 784])
  .kfac (shapes):           [torch.Size([10, 10]), torch.Size([784, 784])]
  .kflr (shapes):           [torch.Size([10, 10]), torch.Size([784, 784])]
  .kfra (shapes):           [torch.Size([10, 10]), torch.Size([784, 784])]
dense.bias
  .grad.shape:              torch.Size([10])
  .grad_batch.shape:        torch.Size([128, 10])
  .variance.shape:          torch.Size([10])
  .sum_grad_squared.shape:  torch.Size([10])
  .batch_l2.shape:          torch.Size([128])
  .diag_ggn_mc.shape:       torch.Size([10])
  .diag_ggn_exact.shape:    torch.Size([10])
  .diag_h.shape:            torch.Size([10])
  .kfac (shapes):           [torch.Size([10, 10])]
  .kflr (shapes):           [torch.Size([10, 10])]
  .kfra (shapes):           [torch.Size([10, 10])]
"""


def test_extend_prints_all_shapes(run_example):
    result = run_example("extend.py", "--synthetic-data")
    assert result.returncode == 0, result.stderr
    assert result.stdout == EXPECTED_QUANTITIES


def test_extend_with_access_unreduced_loss(run_example):
    result = run_example("extend_with_access_unreduced_loss.py", "--synthetic-data")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines(keepends=True)
    assert lines[0] == "Individual loss shape:    torch.Size([128])\n"
    batch = re.fullmatch(r"Mini-batch loss:          tensor\(([\d.]+).*grad_fn=.*\)\n", lines[1])
    mean = re.fullmatch(r"Averaged individual loss: tensor\(([\d.]+).*\)\n", lines[2])
    assert batch and mean and "grad_fn" not in lines[2]
    assert batch.group(1) == mean.group(1)
    assert "".join(lines[3:]) == EXPECTED_QUANTITIES
