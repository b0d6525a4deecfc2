"""The optimizer step alone: fused AdamW, transformers' Adafactor and ours (rl.modeling.make_optimizer:
transformers' arithmetic batched into torch's _foreach operations where the weights are on a GPU).

Same model (SmolLM2's shape: the real weights where they are in var/models, else random weights of
that shape; nothing is downloaded), float32 weights as the trainers keep them, the same random
gradients, two untimed steps (state allocation), then ``--steps`` timed ones (on a GPU timed with a
synchronize after each). For each optimizer it prints the aten operations one step dispatches (on a
GPU about one kernel launch each), the median milliseconds per step and the step's peak memory beyond
the weights, gradients and state (on a GPU: peak CUDA memory allocated during the step; nan on a
CPU). On a CPU ours takes transformers' own step (rl.modeling.BATCHED_ADAFACTOR_DEVICES); ``--force-
batched`` measures the batched step there too.

    bench/optimizer [--device cpu|cuda] [--model-shape 135m|1.7b] [--steps N] [--threads N] [--force-batched]

RESULT: ``adafactor_ratio_vs_transformers`` (their ms / ours: above 1 is faster),
``ops_ours`` / ``ops_transformers`` / ``ops_adamw``, each side's ms and peak MB, ``errors``.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def count_ops(fn):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def measure(name, optimizer, device, steps):
    import torch

    def step():
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    ops = count_ops(step)  # the second step: state exists
    times, peak = [], float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    ms = statistics.median(times) * 1000
    print(f"{name:28s} {ops:6d} ops/step  {ms:9.1f} ms/step  step peak {peak:8.1f} MB")
    return {"ops": ops, "ms": ms, "peak_mb": peak}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    ap.add_argument("--model-shape", default="135m", choices=["135m", "1.7b"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force-batched", action="store_true", help="the batched Adafactor step on a CPU too")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.optimization import Adafactor

    import rl.modeling
    from bench.shapes import model_of_shape

    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    if a.force_batched:
        rl.modeling.BATCHED_ADAFACTOR_DEVICES = (device.type,)
    folder, weights = model_of_shape(a.model_shape, device=str(device))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {Path(folder).name} ({weights} weights, {n_params / 1e6:.0f}M parameters in "
          f"{len(list(model.parameters()))} tensors), float32 on {device}, {a.steps} timed steps, "
          f"threads {a.threads}{', batched Adafactor forced' if a.force_batched else ''}")
    gen = torch.Generator(device=device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, device=device) * 1e-3
    results, errors = {}, []
    makers = {
        "adamw": lambda: rl.modeling.make_optimizer(model.parameters(), "adamw", 1e-5),
        "transformers": lambda: Adafactor(model.parameters(), lr=1e-5, scale_parameter=False, relative_step=False,
                                          warmup_init=False),
        "ours": lambda: rl.modeling.make_optimizer(model.parameters(), "adafactor", 1e-5),
    }
    titles = {"adamw": "AdamW (torch, fused)", "transformers": "Adafactor (transformers)",
              "ours": "Adafactor (ours)"}
    for key, make in makers.items():
        try:
            results[key] = measure(titles[key], make(), device, a.steps)
        except Exception as e:  # noqa: BLE001 (named in the RESULT line)
            errors.append(f"{key}:{type(e).__name__}")
            results[key] = {"ops": float("nan"), "ms": float("nan"), "peak_mb": float("nan")}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ours, theirs = results["ours"], results["transformers"]
    fields = {"device": device.type, "model_shape": a.model_shape, "weights": weights,
              "adafactor_ratio_vs_transformers": round(theirs["ms"] / ours["ms"], 3),
              "ops_ours": ours["ops"], "ops_transformers": theirs["ops"], "ops_adamw": results["adamw"]["ops"],
              "ms_ours": round(ours["ms"], 1), "ms_transformers": round(theirs["ms"], 1),
              "ms_adamw": round(results["adamw"]["ms"], 1), "peak_mb_ours": round(ours["peak_mb"], 1),
              "peak_mb_transformers": round(theirs["peak_mb"], 1), "errors": ",".join(errors) or 0}
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
