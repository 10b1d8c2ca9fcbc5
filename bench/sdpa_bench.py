"""PyTorch SDPA timings for `ring-attention bench attention`, one JSON object per line on stdout.

Usage: python3 sdpa_bench.py '<json list of {batch, seq, heads, dim, causal}>' REPS [cuda|cpu]
For each config and each backend torch offers here (CUDA: flash, cuDNN, efficient; CPU: its
fused kernel and the plain math one), times the forward, the backward, and forward+backward
(median of REPS after a warm-up; CUDA events on the GPU), bfloat16 on CUDA and float32 on the
CPU (as ours), layout [batch, heads, seq, dim]. A backend that refuses a config is reported
with its error instead of a time.
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "cuda": {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION},
    "cpu": {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH},
}


def timed_cpu(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main(configs, reps, device):
    cuda = device == "cuda"
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(json.dumps({"torch": torch.__version__, "cudnn": torch.backends.cudnn.version() if cuda else None, "device": name}), flush=True)
    timer = timed if cuda else timed_cpu
    for c in configs:
        shape = (c["batch"], c["heads"], c["seq"], c["dim"])
        dtype = torch.bfloat16 if cuda else torch.float32
        try:
            q, k, v, dout = (torch.randn(shape, device=device, dtype=dtype) for _ in range(4))
        except torch.cuda.OutOfMemoryError as e:  # this shape's rows only, not every later one
            for name in BACKENDS[device]:
                print(json.dumps(dict(c, backend=name, error=str(e).splitlines()[0][:200])), flush=True)
            torch.cuda.empty_cache()
            continue
        for x in (q, k, v):
            x.requires_grad_()
        for name, backend in BACKENDS[device].items():
            row = dict(c, backend=name)
            try:
                with sdpa_kernel(backend):
                    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"])
                    out = fwd()
                    row["forwardMs"] = timer(fwd, reps)
                    row["backwardMs"] = timer(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), reps)
                    row["totalMs"] = timer(lambda: torch.autograd.grad(fwd(), (q, k, v), dout), reps)
                    del out
            except Exception as e:  # a backend that does not support this shape or GPU
                row["error"] = str(e).splitlines()[0][:200]
            print(json.dumps(row), flush=True)
        del q, k, v, dout
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "cuda")
