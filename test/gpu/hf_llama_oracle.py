"""transformers' LlamaForCausalLM on a checkpoint our saveLlama wrote, as the oracle.

Usage: python3 hf_llama_oracle.py DIR [--autocast-bf16]. DIR holds the checkpoint (config.json, model.safetensors)
and tokens.i32 / targets.i32 (raw int32). Loads the model with transformers (float32, eager
attention, on the GPU when there is one), computes the logits for the tokens, the mean
cross-entropy against the targets (no shift: targets are already the next tokens; -100 ignored)
and its gradient for every parameter. Writes logits.f32, loss.json and grads.safetensors.
With --autocast-bf16 (needs a GPU) the forward runs under torch.autocast(bfloat16), as mixed-
precision training does: float32 parameters and gradients, bfloat16 matrix products.
"""
import contextlib
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaForCausalLM


def main(d, autocast_bf16=False):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if autocast_bf16 and device != "cuda":
        sys.exit("--autocast-bf16 needs a CUDA device")
    # transformers 4.56 renamed torch_dtype to dtype (5 may drop the old name)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = LlamaForCausalLM.from_pretrained(d, **{dtype_kw: torch.float32}, attn_implementation="eager").to(device)
    tokens = torch.from_file(os.path.join(d, "tokens.i32"), size=os.path.getsize(os.path.join(d, "tokens.i32")) // 4, dtype=torch.int32)
    targets = torch.from_file(os.path.join(d, "targets.i32"), size=tokens.numel(), dtype=torch.int32)
    with torch.autocast("cuda", dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext():
        logits = model(input_ids=tokens.long().to(device)[None]).logits[0]
    loss = torch.nn.functional.cross_entropy(logits.float(), targets.long().to(device), ignore_index=-100)
    loss.backward()
    with open(os.path.join(d, "logits.f32"), "wb") as f:
        f.write(logits.detach().float().cpu().contiguous().numpy().tobytes())
    grads = {n: p.grad.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.grad is not None}
    save_file(grads, os.path.join(d, "grads.safetensors"))
    json.dump({"loss": loss.item(), "device": device, "autocast_bf16": autocast_bf16,
               "transformers": transformers.__version__}, open(os.path.join(d, "loss.json"), "w"))


if __name__ == "__main__":
    main(sys.argv[1], "--autocast-bf16" in sys.argv[2:])
