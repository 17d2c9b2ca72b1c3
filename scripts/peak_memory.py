"""Peak memory of one forward + backward of the standard cases, on the CPU.

Each case runs in a fresh interpreter: it allocates its inputs (a [2, 256, 200, 272] float32 map in
the case's layout, the boxes, the upstream gradient), reads its resident memory (VmRSS), runs
roi_align / roi_pool forward and backward once, and reads its peak resident memory (VmHWM, reset
to the resident memory before the call; ru_maxrss would also count the forking parent's).
The peak rise includes what the call returns (output, argmax, input gradient); "beyond" subtracts
those, leaving the kernels' working memory and any temporaries.

Usage: python scripts/peak_memory.py [--threads 2]   (Linux: reads /proc/self/status)
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, torch, roiops
op, layout, k, size, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 256, 200, 272, generator=g)
if layout == "channels_last":
    x = x.contiguous(memory_format=torch.channels_last)
x.requires_grad_(True)
wh = torch.exp(torch.empty(k, 2).uniform_(2.8, 5.8, generator=g))  # 16 to 330 px boxes
xy = torch.rand(k, 2, generator=g) * torch.tensor([1088.0, 800.0])
rois = torch.cat([torch.randint(0, 2, (k, 1), generator=g).float(), xy - wh / 2, xy + wh / 2], 1)
grad = torch.randn(k, 256, size, size, generator=g)
if layout == "channels_last":
    grad = grad.contiguous(memory_format=torch.channels_last)
def run(x, rois, grad):
    if op == "roi_pool":
        out = roiops.roi_pool(x, rois, size, 0.25)
    else:
        out = roiops.roi_align(x, rois, size, 0.25, 2, True, op.split("_")[-1])
    out.backward(grad)
    return out
# A small call first: loads the code (the pages of the libraries count as resident) and starts the threads.
small = x.detach()[:1, :, :16, :16].clone(memory_format=torch.preserve_format)
run(small.requires_grad_(True), rois[:4] * torch.tensor([0.0, 0.05, 0.05, 0.05, 0.05]), grad[:4])
def status(key):  # bytes
    return int(next(line for line in open("/proc/self/status") if line.startswith(key + ":")).split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # the peak so far (imports, the small call) := resident now
before = status("VmRSS")
out = run(x, rois, grad)
peak = status("VmHWM")
returned = out.numel() * (4 + (4 if op != "roi_align_avg" else 0)) + x.grad.numel() * 4  # + int32 argmax
print(json.dumps({"rise": peak - before, "returned": returned}))
"""

CASES = [(k, size) for k, size in ((512, 7), (100, 14))]
OPS = ("roi_align_avg", "roi_align_max", "roi_pool")
LAYOUTS = ("contiguous", "channels_last")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    mib = 1 << 20
    print(f"| case | layout | peak rise (MiB) | returned (MiB) | beyond (MiB) |  [{args.threads} threads]")
    print("|---|---|---:|---:|---:|")
    for k, size in CASES:
        for op in OPS:
            for layout in LAYOUTS:
                arg = json.dumps([op, layout, k, size, args.threads])
                proc = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(proc.stderr)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(
                    f"| {op} {k} RoIs {size}x{size} | {layout} | {r['rise'] / mib:.0f} | {r['returned'] / mib:.0f} "
                    f"| {(r['rise'] - r['returned']) / mib:.0f} |"
                )


if __name__ == "__main__":
    main()
