"""Our RL step and reward-model training against TRL's RLOOTrainer and RewardTrainer.

Same model (SmolLM2-135M-Instruct), same prompts in the same order, same batch size (samples
per optimizer step), same response length, same torch threads, same learning rate and KL
weight. RLOO needs two samples per prompt, so each step of both trainers sees the same B/2
prompts twice: the same tokens go through both (our trainer gets each prompt listed twice,
unshuffled; the paper's method itself samples once per prompt). Each
trainer runs in its own subprocess so that its peak memory (max RSS; on a GPU also peak
CUDA memory) is its own. Both sides generate exactly ``--response-tokens`` tokens (EOS is
not allowed to stop early), so samples/s counts the same work. The first step of each run is
a warm-up and is not timed.

    bench/rl [--quick] [--threads N] [--batch B] [--response-tokens T] [--steps S]

Ends with: RESULT rl_ratio_vs_trl=... rl_peak_mb=... trl_peak_mb=... rm_ratio_vs_trl=...
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
DATA = Path(os.environ.get("SHARED_DATA_DIR", ROOT.parent / "shared" / "data"))


def prompts_for(n, max_words):
    """Real HH dialogues (shared data) when present, cut to their last ``max_words`` words."""
    import gzip

    from evalsite.tasktext import policy_prompt, split_dialogue

    texts = []
    path = DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
    if path.exists():
        with gzip.open(path, "rt") as f:
            for line in f:
                parts = split_dialogue(json.loads(line)["chosen"])
                if parts:
                    texts.append(policy_prompt("harmless", " ".join(parts[0].split(" ")[-max_words:])))
                if len(texts) >= n:
                    break
    while len(texts) < n:  # no shared data: synthetic but varied prompts
        i = len(texts)
        texts.append(policy_prompt("helpful", f"\n\nHuman: How do I plant {i % 7 + 1} trees near a "
                                              f"{['river', 'house', 'road'][i % 3]}?" + " Please explain." * (i % 4)))
    return texts


def length_reward(texts):
    """A programmatic reward: the share of letters and spaces (same function for both sides)."""
    return [sum(c.isalpha() or c == " " for c in t) / max(len(t), 1) for t in texts]


def peak_mb():
    import torch

    out = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# --- workers (each in its own process) -------------------------------------------------------
def run_ours_rl(a):
    import torch

    from rl.reinforce import ReinforceTrainer, RLConfig

    cfg = RLConfig(batch_size=a.batch, epochs=1, max_response_tokens=a.response_tokens, max_prompt_tokens=a.prompt_tokens,
                   learning_rate=1e-5, beta=0.05, temperature=0.9, save_every=10**9, optimizer=a.ours_optimizer,
                   shuffle=False)
    trainer = ReinforceTrainer.from_sft(MODEL, lambda contexts, texts: length_reward(texts), cfg)
    trainer.stop_ids = []  # exactly response_tokens tokens, as on the TRL side
    prompts = [p for p in prompts_for(a.batch * (a.steps + 1) // 2, a.prompt_words) for _ in range(2)]
    times = []

    def on_step(step, total, metrics, texts):
        times.append(time.perf_counter())

    start = time.perf_counter()
    trainer.train(prompts, on_step=on_step)
    timed = times[-1] - times[0]
    return {"samples_per_s": a.batch * (len(times) - 1) / timed, "steps": len(times), "total_s": times[-1] - start,
            "device": str(trainer.device), **peak_mb()}


def run_trl_rl(a):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    tokenizer.padding_side = "left"
    # RLOO needs >= 2 samples per prompt: batch/2 prompts x 2 samples = the same samples per step.
    n_prompts = a.batch * (a.steps + 1) // 2
    dataset = Dataset.from_dict({"prompt": prompts_for(n_prompts, a.prompt_words)})
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    def reward(prompts, completions, **kw):
        return length_reward(completions)

    out = tempfile.mkdtemp(prefix="trl-rloo-")
    config = RLOOConfig(
        output_dir=out, per_device_train_batch_size=a.batch, num_generations=2, max_completion_length=a.response_tokens,
        temperature=0.9, learning_rate=1e-5, beta=0.05, max_steps=a.steps + 1, logging_steps=1, report_to="none",
        save_strategy="no", use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
        gradient_checkpointing=a.trl_gradient_checkpointing, disable_dropout=True, seed=0, dataloader_num_workers=0,
        generation_kwargs={"min_new_tokens": a.response_tokens}, shuffle_dataset=False,
    )
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Clock()])
    start = time.perf_counter()
    trainer.train()
    timed = times[-1] - times[0]
    return {"samples_per_s": a.batch * (len(times) - 1) / timed, "steps": len(times), "total_s": times[-1] - start,
            **peak_mb()}


def _rm_pairs(a):
    prompts = prompts_for(a.batch * (a.steps + 1), a.prompt_words)
    good = " I can help with that safely: here is a clear and careful answer."
    bad = " no. no. no!!! 123 ???"
    return prompts, good, bad


def run_ours_rm(a):
    from rl.reward_model import Pair, RewardModelConfig, RewardScorer, train_reward_model

    prompts, good, bad = _rm_pairs(a)
    pairs = [Pair(p, good, bad, 1.0) for p in prompts]
    scorer = RewardScorer.from_folder(MODEL, max_length=a.prompt_tokens + 32)
    times = []
    cfg = RewardModelConfig(learning_rate=1e-5, epochs=1, batch_size=a.batch, max_length=a.prompt_tokens + 32,
                            optimizer="adamw")
    start = time.perf_counter()
    train_reward_model(scorer, pairs, cfg, on_step=lambda step, total, m: times.append(time.perf_counter()))
    timed = times[-1] - times[0]
    return {"pairs_per_s": a.batch * (len(times) - 1) / timed, "steps": len(times), "total_s": times[-1] - start,
            **peak_mb()}


def run_trl_rm(a):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    prompts, good, bad = _rm_pairs(a)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    dataset = Dataset.from_dict({"chosen": [p + good for p in prompts], "rejected": [p + bad for p in prompts]})
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    config = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-rm-"), per_device_train_batch_size=a.batch, learning_rate=1e-5,
        max_steps=a.steps + 1, max_length=a.prompt_tokens + 32, logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
        gradient_checkpointing=a.trl_gradient_checkpointing, seed=0, dataloader_num_workers=0,
    )
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[Clock()])
    start = time.perf_counter()
    trainer.train()
    timed = times[-1] - times[0]
    return {"pairs_per_s": a.batch * (len(times) - 1) / timed, "steps": len(times), "total_s": times[-1] - start,
            **peak_mb()}


WORKERS = {"ours-rl": run_ours_rl, "trl-rl": run_trl_rl, "ours-rm": run_ours_rm, "trl-rm": run_trl_rm}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small batch, short responses, 2 timed steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="samples (RL) or pairs (RM) per optimizer step")
    ap.add_argument("--response-tokens", type=int, default=None)
    ap.add_argument("--prompt-words", type=int, default=None, help="prompts keep their last N words")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up step")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="TRL's default; off by default because our trainer does not recompute activations either")
    ap.add_argument("--ours-optimizer", default="adafactor", choices=["adamw", "adafactor"],
                    help="our RL optimizer: adafactor (the paper's and our default; ~2 GB less for two 135M "
                         "models) or adamw (TRL's default)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.batch = a.batch or (4 if a.quick else 16)
    a.response_tokens = a.response_tokens or (16 if a.quick else 64)
    a.prompt_words = a.prompt_words or (40 if a.quick else 120)
    a.prompt_tokens = 512
    a.steps = a.steps or (2 if a.quick else 5)

    import torch

    torch.set_num_threads(a.threads)
    if a.worker:
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        print("WORKER " + json.dumps(WORKERS[a.worker](a)), flush=True)
        return

    if not MODEL.exists():
        from evalsite.modelzoo import convert_smollm2

        convert_smollm2(MODEL)
    print(f"model {MODEL.name}; batch {a.batch}, response tokens {a.response_tokens}, prompts cut to "
          f"{a.prompt_words} words, {a.steps} timed steps after 1 warm-up, threads {a.threads}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    results = {}
    for name in ("ours-rl", "trl-rl", "ours-rm", "trl-rm"):
        cmd = [sys.executable, __file__, "--worker", name, "--threads", str(a.threads), "--batch", str(a.batch),
               "--response-tokens", str(a.response_tokens), "--prompt-words", str(a.prompt_words),
               "--steps", str(a.steps), "--ours-optimizer", a.ours_optimizer] + (["--trl-gradient-checkpointing"] if a.trl_gradient_checkpointing else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
               "DJANGO_SETTINGS_MODULE": "", "DISABLE_TQDM": "1", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("WORKER ")), None)
        if proc.returncode or line is None:
            print(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            sys.exit(1)
        results[name] = json.loads(line[len("WORKER "):])
        r = results[name]
        rate = r.get("samples_per_s") or r.get("pairs_per_s")
        unit = "samples/s" if "samples_per_s" in r else "pairs/s"
        mem = f"peak RSS {r['rss_mb']:.0f} MB" + (f", peak CUDA {r['cuda_mb']:.0f} MB" if "cuda_mb" in r else "")
        print(f"{name:8s} {rate:8.3f} {unit}  ({r['steps']} steps, {r['total_s']:.1f} s)  {mem}", flush=True)

    key = "cuda_mb" if "cuda_mb" in results["ours-rl"] else "rss_mb"
    rl_ratio = results["ours-rl"]["samples_per_s"] / results["trl-rl"]["samples_per_s"]
    rm_ratio = results["ours-rm"]["pairs_per_s"] / results["trl-rm"]["pairs_per_s"]
    print(f"RL: ours / TRL RLOO = {rl_ratio:.2f}x samples/s; peak {key} ours {results['ours-rl'][key]:.0f} MB, "
          f"TRL {results['trl-rl'][key]:.0f} MB")
    print(f"RM: ours / TRL RewardTrainer = {rm_ratio:.2f}x pairs/s; peak {key} ours {results['ours-rm'][key]:.0f} MB, "
          f"TRL {results['trl-rm'][key]:.0f} MB")
    print(f"RESULT rl_ratio_vs_trl={rl_ratio:.3f} rl_peak_mb={results['ours-rl'][key]:.0f} "
          f"trl_peak_mb={results['trl-rl'][key]:.0f} rm_ratio_vs_trl={rm_ratio:.3f} "
          f"rm_peak_mb={results['ours-rm'][key]:.0f} trl_rm_peak_mb={results['trl-rm'][key]:.0f}")


if __name__ == "__main__":
    main()
