"""pytest-benchmark suite for the standard speed cases (the same cases as `roiops-bench speed`).

    pytest benchmarks/ --benchmark-group-by=param:case        # everything
    pytest benchmarks/ -k "box_head and roi_align_avg"        # a subset

Each case is timed for roiops and, where they have the op and dtype, the peers (torchvision, ONNX
Runtime, OpenVINO when installed; inference runtimes forward only); compare the groups.
"""

import pytest
import torch

from roiops.bench import peers
from roiops.bench.speed import Case, implementations, make_inputs, standard_cases

CASES = [c for c in standard_cases(full=True) if c.threads == 2]
IMPLS = ["roiops", *peers.PEERS]


def _case_id(c: Case) -> str:
    return f"{c.name}-{c.op}-{c.dtype}-{c.layout}"


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _implementation(impl, case, x, rois, backward):
    if impl == "roiops":
        return implementations(case, with_reference=False)["roiops"]
    if peers.availability()[impl] is not None:
        pytest.skip(f"{impl}: {peers.availability()[impl]}")
    built = peers.build(impl, case, x, rois)
    if built is None or (backward and not built[1]):
        pytest.skip(f"{impl} has no {'backward of ' if backward else ''}{case.op} for {case.dtype}")
    return built[0]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward(benchmark, case, impl):
    x, rois = make_inputs(case, "cpu")
    fn = _implementation(impl, case, x, rois, backward=False)
    benchmark.group = f"forward {_case_id(case)}"
    with torch.no_grad():
        benchmark.pedantic(fn, args=(x, rois), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward(benchmark, case, impl):
    x, rois = make_inputs(case, "cpu")
    fn = _implementation(impl, case, x, rois, backward=True)
    x.requires_grad_(True)
    grad = torch.randn_like(fn(x, rois))

    def setup():  # a fresh graph per round; only the backward is timed
        return (fn(x, rois),), {}

    benchmark.group = f"backward {_case_id(case)}"
    benchmark.pedantic(lambda out: torch.autograd.grad(out, x, grad), setup=setup, rounds=5, warmup_rounds=1)
