"""The alternatives a user would pick for the same pooling, as callables timed beside roiops.

- torchvision.ops (eager PyTorch; serial CPU kernels; no max mode, no bfloat16 RoIAlign on the CPU);
- ONNX Runtime and OpenVINO (the CPU inference runtimes people deploy to; multithreaded), each
  running a one-node ONNX model (RoiAlign opset 16, or MaxRoiPool) with the same inputs and the same
  thread count, in this process. They are optional: absent ones are reported, not fatal.

Semantics: the benchmark shows each peer's largest disagreement with roiops beside its time. ONNX's
RoiAlign "max" takes the maximum of the bilinear taps scaled by their weights, not of the
interpolated samples, a different quantity (compare its speed only); OpenVINO's MaxRoiPool rounds
boxes differently. Inference runtimes have no backward.
"""

import importlib.util
from typing import Callable, Dict, Optional, Tuple

import torch

PEERS = ("torchvision", "onnxruntime", "openvino")


def availability() -> Dict[str, Optional[str]]:
    """Peer -> None if usable, else why not."""
    status = {}
    for name in PEERS:
        if importlib.util.find_spec(name) is None:
            status[name] = "not installed"
            continue
        try:
            if name == "torchvision":
                import torchvision.ops  # noqa: F401
            elif name == "onnxruntime":
                import onnx  # noqa: F401
                import onnxruntime  # noqa: F401
            else:
                import onnx  # noqa: F401
                import openvino  # noqa: F401
            status[name] = None
        except Exception as error:  # installed but unusable (e.g. built for another torch)
            status[name] = f"not importable: {str(error).splitlines()[0][:60]}"
    return status


def _onnx_model(case) -> bytes:
    """A one-node ONNX model of the case's op, float32 NCHW."""
    from onnx import TensorProto, helper

    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [case.batch, case.channels, None, None])
    output = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None)
    if case.op == "roi_pool":
        rois = helper.make_tensor_value_info("rois", TensorProto.FLOAT, [None, 5])
        node = helper.make_node(
            "MaxRoiPool",
            ["features", "rois"],
            ["pooled"],
            pooled_shape=[case.output_size, case.output_size],
            spatial_scale=case.spatial_scale,
        )
        inputs = [features, rois]
    else:
        rois = helper.make_tensor_value_info("rois", TensorProto.FLOAT, [None, 4])
        batch = helper.make_tensor_value_info("batch_indices", TensorProto.INT64, [None])
        node = helper.make_node(
            "RoiAlign",
            ["features", "rois", "batch_indices"],
            ["pooled"],
            mode="max" if case.op == "roi_align_max" else "avg",
            output_height=case.output_size,
            output_width=case.output_size,
            sampling_ratio=max(case.sampling_ratio, 0),
            spatial_scale=case.spatial_scale,
            coordinate_transformation_mode="half_pixel" if case.aligned else "output_half_pixel",
        )
        inputs = [features, rois, batch]
    graph = helper.make_graph([node], "roi_op", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    return model.SerializeToString()


def _feeds(case, x: torch.Tensor, rois: torch.Tensor) -> Dict[str, object]:
    feeds = {"features": x.float().contiguous().numpy()}
    if case.op == "roi_pool":
        feeds["rois"] = rois.float().contiguous().numpy()
    else:
        feeds["rois"] = rois[:, 1:].float().contiguous().numpy()
        feeds["batch_indices"] = rois[:, 0].long().numpy()
    return feeds


def build(name: str, case, x: torch.Tensor, rois: torch.Tensor) -> Optional[Tuple[Callable, bool]]:
    """(fn(x, rois) -> Tensor, differentiable) for a peer that supports the case's op, dtype and
    device; None otherwise. The runtimes get their inputs converted once, here, outside the timed
    call, and ignore fn's arguments."""
    if name == "torchvision":
        import torchvision.ops as tv_ops

        if case.dtype == "bfloat16" or case.op == "roi_align_max":
            return None
        a = dict(output_size=case.output_size, spatial_scale=case.spatial_scale)
        if case.op == "roi_pool":
            return (lambda t, r: tv_ops.roi_pool(t, r, **a)), True
        if case.op == "ps_roi_pool":
            return (lambda t, r: tv_ops.ps_roi_pool(t, r, **a)), True
        if case.op == "ps_roi_align":
            return (lambda t, r: tv_ops.ps_roi_align(t, r, **a, sampling_ratio=case.sampling_ratio)), True
        return (
            lambda t, r: tv_ops.roi_align(t, r, **a, sampling_ratio=case.sampling_ratio, aligned=case.aligned),
            True,
        )
    if case.dtype != "float32" or x.device.type != "cpu" or case.op.startswith("ps_"):
        return None  # (the runtimes: float32 on the CPU, and no position-sensitive operator)
    feeds = _feeds(case, x, rois)
    model = _onnx_model(case)
    if name == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = case.threads
        options.inter_op_num_threads = 1
        ort.set_default_logger_severity(3)  # its max mode warns on every session; the table says what differs
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return (lambda _t, _r: torch.from_numpy(session.run(None, feeds)[0])), False
    if name == "openvino":
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(model, b""),
            "CPU",
            {"INFERENCE_NUM_THREADS": case.threads, "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1},
        )
        request = compiled.create_infer_request()

        def call(_t, _r):
            request.infer(feeds)
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

        return call, False
    raise ValueError(name)
