"""PyTorch SDPA timings for bench/attention-cuda.mjs, one JSON object per line on stdout.

Usage: python3 sdpa_bench.py '<json list of {batch, seq, heads, dim, causal}>' REPS
For each config and each backend torch offers here (flash, cuDNN, efficient), times the
forward, the backward, and forward+backward with CUDA events (median of REPS after a
warm-up), bfloat16, layout [batch, heads, seq, dim]. A backend that refuses a config is
reported with its error instead of a time.
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}


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
    return sorted(times)[len(times) // 2]


def main(configs, reps):
    print(json.dumps({"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "device": torch.cuda.get_device_name()}), flush=True)
    for c in configs:
        shape = (c["batch"], c["heads"], c["seq"], c["dim"])
        q, k, v, dout = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        for x in (q, k, v):
            x.requires_grad_()
        for name, backend in BACKENDS.items():
            row = dict(c, backend=name)
            try:
                with sdpa_kernel(backend):
                    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"])
                    out = fwd()
                    row["forwardMs"] = timed(fwd, reps)
                    row["backwardMs"] = timed(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), reps)
                    row["totalMs"] = timed(lambda: torch.autograd.grad(fwd(), (q, k, v), dout), reps)
                    del out
            except Exception as e:  # a backend that does not support this shape or GPU
                row["error"] = str(e).splitlines()[0][:200]
            print(json.dumps(row), flush=True)
        del q, k, v, dout
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), int(sys.argv[2]))
