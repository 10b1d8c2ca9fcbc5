"""PyTorch's scaled_dot_product_attention on the same inputs as a GPU test, as the oracle.

Usage: python3 sdpa_oracle.py DIR. DIR holds meta.json and q/k/v/dout as raw float32
([batch, seq, heads, dim], already rounded to the test's dtype). Writes, for float64 and
for the test's dtype (torch's own low-precision kernels), out/dq/dk/dv as raw float32:
out_fp64.f32, dq_fp64.f32, ..., out_lowp.f32, ... and torch.json (version, device).
Causal is bottom-right aligned (key j visible to query i when j <= i + seqK - seqQ).
"""
import json
import os
import sys

import torch
import torch.nn.functional as F


def main(d):
    m = json.load(open(os.path.join(d, "meta.json")))
    b, sq, sk, h, hk, dim = m["batch"], m["seqQ"], m["seqK"], m["heads"], m["kvHeads"], m["dim"]

    def load(name, seq, heads):
        n = b * seq * heads * dim
        return torch.from_file(os.path.join(d, name + ".f32"), shared=False, size=n, dtype=torch.float32).view(b, seq, heads, dim)

    q, k, v, dout = load("q", sq, h), load("k", sk, hk), load("v", sk, hk), load("dout", sq, h)
    low = {"bfloat16": torch.bfloat16, "float16": torch.float16}[m["dtype"]]
    mask, is_causal = None, False
    if m["causal"]:
        if sq == sk:
            is_causal = True  # lets torch pick its flash kernel for the low-precision run
        else:
            i = torch.arange(sq, device="cuda").view(sq, 1)
            j = torch.arange(sk, device="cuda").view(1, sk)
            mask = j <= i + (sk - sq)
    for tag, dt in (("fp64", torch.float64), ("lowp", low)):
        leaves = [x.cuda().to(dt).requires_grad_() for x in (q, k, v)]
        qq, kk, vv = (x.transpose(1, 2) for x in leaves)
        # Our head i reads kv head i // (h / hk): repeat_interleave gives the same mapping.
        kk, vv = kk.repeat_interleave(h // hk, dim=1), vv.repeat_interleave(h // hk, dim=1)
        o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, is_causal=is_causal, scale=m["scale"])
        o.backward(dout.cuda().to(dt).transpose(1, 2))
        results = {"out": o.transpose(1, 2), "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}
        for name, t in results.items():
            with open(os.path.join(d, f"{name}_{tag}.f32"), "wb") as f:
                f.write(t.detach().float().contiguous().cpu().numpy().tobytes())
    json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name()}, open(os.path.join(d, "torch.json"), "w"))


if __name__ == "__main__":
    main(sys.argv[1])
