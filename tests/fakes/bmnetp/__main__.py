"""Fake `python3 -m bmnetp` (tpu-nntc FP32): strict flags, loads the TorchScript, writes a bmodel."""
import argparse
import os

from record import record

p = argparse.ArgumentParser(prog="bmnetp")
for flag in ("--model", "--target", "--shapes", "--net_name", "--opt", "--dyn", "--cmp", "--enable_profile"):
    p.add_argument(flag, required=flag in ("--model", "--target", "--shapes", "--net_name"))
a = p.parse_args()
assert a.target == "BM1684" and a.dyn in ("True", "False", None) and a.cmp in ("True", "False", None)
import torch  # noqa: E402

m = torch.jit.load(a.model)
shape = [int(v) for v in a.shapes.strip("[]").split(",")]
outs = m(torch.zeros(shape))
record("bmnetp", **vars(a), outputs=len(outs))
os.makedirs("compilation", exist_ok=True)
open("compilation/compilation.bmodel", "w").write("fake fp32 bmodel\n")
