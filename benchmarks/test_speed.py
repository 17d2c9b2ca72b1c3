"""pytest-benchmark suite for the standard speed cases (the same cases as `roiops-bench speed`).

    pytest benchmarks/ --benchmark-group-by=param:case        # everything
    pytest benchmarks/ -k "box_head and roi_align_avg"        # a subset

Each case is timed for roiops and, where it has the op and dtype, torchvision; compare the groups.
"""
import pytest
import torch

from roiops.bench.speed import Case, implementations, make_inputs, standard_cases

CASES = [c for c in standard_cases(full=True) if c.threads == 2]
IMPLS = ["roiops", "torchvision"]


def _case_id(c: Case) -> str:
    return f"{c.name}-{c.op}-{c.dtype}-{c.layout}"


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward(benchmark, case, impl):
    fn = implementations(case, with_reference=False).get(impl)
    if fn is None:
        pytest.skip(f"{impl} has no {case.op} for {case.dtype}")
    x, rois = make_inputs(case, "cpu")
    benchmark.group = f"forward {_case_id(case)}"
    with torch.no_grad():
        benchmark.pedantic(fn, args=(x, rois), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward(benchmark, case, impl):
    fn = implementations(case, with_reference=False).get(impl)
    if fn is None:
        pytest.skip(f"{impl} has no {case.op} for {case.dtype}")
    x, rois = make_inputs(case, "cpu")
    x.requires_grad_(True)
    grad = torch.randn_like(fn(x, rois))

    def setup():  # a fresh graph per round; only the backward is timed
        return (fn(x, rois),), {}

    benchmark.group = f"backward {_case_id(case)}"
    benchmark.pedantic(lambda out: torch.autograd.grad(out, x, grad), setup=setup, rounds=5, warmup_rounds=1)
