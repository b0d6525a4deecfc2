"""Labeling speed: the naive reference vs the real labeler, in one process, on TL;DR pairs.

Naive = each order of each pair scored alone with its full prompt, the textbook way
        (``model(ids).logits[0, -1]``): no batching, no KV reuse.
Real  = shared prefix (preamble + exemplars) computed once and reused, the two orders of a pair
        sharing everything up to the first response, the rest batched with right padding, and the
        LM head applied only at the scored position. Both give the same probabilities (printed).
Both run SmolLM2-135M-Instruct on the same pairs from ../shared/data/tldr-oai1b-judged.csv with
2 torch threads; the 0-shot Base prompt and a 2-shot prompt. Prints pairs/s, ratios, peak memory,
the largest probability difference between the two, and the fraction of the machine's matmul peak
(a large torch.mm measured in the same run) the labeler reaches. Ends with a RESULT line.

    bench/labeling           # 24 pairs (several minutes: the naive reference is slow)
    bench/labeling --quick   # the 3 shortest posts, about a minute on a quiet machine
"""
import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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


def matmul_peak_flops(size=2048, reps=5):
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 3 shortest posts (about a minute on a quiet machine)")
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default=str(ROOT / "var" / "models" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--data", default=os.environ.get("SHARED_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    n = args.pairs or (3 if args.quick else 24)

    import torch

    torch.set_num_threads(args.threads)
    from evalsite.modelzoo import convert_smollm2, is_hf_folder
    from labeling.backends import LocalBackend, LocalBackendConfig
    from labeling.scoring import LabelerSettings, Pair, PreferenceLabeler
    from evalsite.stats import labeler_alignment, position_bias

    if not is_hf_folder(args.model):
        convert_smollm2(args.model)
    csv_path = Path(args.data) / "tldr-oai1b-judged.csv"
    if not csv_path.exists():
        sys.exit(f"missing {csv_path} (the shared data folder beside the checkout)")
    rows, shots = load_pairs(csv_path, n, 2, shortest=args.quick)
    pairs = [Pair(c, a, b) for c, a, b, _ in rows]
    judge = [p for *_, p in rows]

    backend = LocalBackend(LocalBackendConfig(args.model, threads=args.threads, batch_size=args.batch_size))
    print(f"model {Path(args.model).name}, {len(pairs)} pairs, {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}, device {backend.device}, dtype {backend.dtype}")
    peak = matmul_peak_flops()
    print(f"matmul peak (2048x2048 fp32 torch.mm): {peak / 1e9:.1f} GFLOP/s")

    ratios, max_diff, fractions = {}, 0.0, []
    for name, exemplars in (("0shot", []), ("2shot", shots)):
        labeler = PreferenceLabeler(backend, LabelerSettings(task="summarization", variant="base", exemplars=exemplars))
        tokens = sum(backend.count_tokens(t) for p in pairs for t in labeler.prompts(p))
        results, speed = {}, {}
        for mode in ("naive", "fast"):
            backend.config.prefix_reuse = mode == "fast"
            backend._prefix = None  # the fast run pays for its shared prefix
            flops0 = backend.forward_flops
            t = time.perf_counter()
            results[mode] = labeler.label(pairs)
            dt = time.perf_counter() - t
            speed[mode] = len(pairs) / dt
            if mode == "fast":
                fractions.append((backend.forward_flops - flops0) / dt / peak)
            print(f"  {name} {mode:5s}: {speed[mode]:7.2f} pairs/s ({dt:6.2f} s, {tokens / len(pairs):.0f} prompt tokens/pair)")
        diff = max(max(abs(x.p_slot1_order1 - y.p_slot1_order1), abs(x.p_slot1_order2 - y.p_slot1_order2),
                       abs(x.p_first - y.p_first)) for x, y in zip(results["naive"], results["fast"]))
        max_diff = max(max_diff, diff)
        ratios[name] = speed["fast"] / speed["naive"]
        fast = results["fast"]
        al = labeler_alignment([r.p_first for r in fast], judge)
        pb = position_bias([r.p_slot1_order1 for r in fast], [r.p_slot1_order2 for r in fast])
        print(f"  {name}: speed-up {ratios[name]:.2f}x, max |p_naive - p_fast| = {diff:.2e}; "
              f"agreement with the GPT-4 judge {100 * al['accuracy']:.1f}% (n={al['n']}), "
              f"same position {pb['same_position_pct']:.0f}%, mean label mass "
              f"{sum(r.label_mass for r in fast) / len(fast):.3f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mb = max(peak_mb, torch.cuda.max_memory_allocated() / 2 ** 20)
    frac = max(fractions)
    print(f"peak memory {peak_mb:.0f} MB; the fast labeler reaches {100 * frac:.1f}% of the matmul peak")
    print(f"RESULT ratio_0shot={ratios['0shot']:.2f} ratio_2shot={ratios['2shot']:.2f} max_prob_diff={max_diff:.2e} "
          f"peak_mb={peak_mb:.0f} matmul_peak_fraction={frac:.3f}")


if __name__ == "__main__":
    main()
