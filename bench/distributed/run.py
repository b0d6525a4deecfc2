"""Samples/s of the RL step on two CPU processes (accelerate launch --cpu, gloo) against one, and peak
RSS per process. Usage: .venv/bin/python bench/distributed/run.py [--steps 6] [--batch 8]

One process runs ReinforceTrainer in this process; two run the same global batches through
``python -m torch.distributed.run --standalone --nproc_per_node 2`` (as rl/launch.py does on CPUs; each takes half of every batch
and the gradients are summed once per step). Each training process uses one thread, so on a
machine of 2 cores the ideal speed-up is 2; less because of the gradient all-reduce, the
launcher and two copies of the models and the reward model.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def worker(spec_path):
    """One training process (run under accelerate launch, or alone)."""
    import torch
    import transformers

    from rl.reinforce import ReinforceTrainer, RLConfig
    from rl.reward_model import RewardScorer

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    accelerator = None
    if spec["processes"] > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    reward = RewardScorer.from_folder(spec["model"], "cpu")
    config = RLConfig(batch_size=spec["batch"], epochs=1, max_response_tokens=16, optimizer="adamw",
                      learning_rate=1e-4, shuffle=False)
    trainer = ReinforceTrainer.from_sft(spec["model"], reward, config, device="cpu", accelerator=accelerator)
    prompts = [f"prompt {i}: the quick brown fox jumps over the lazy dog" for i in range(spec["batch"] * spec["steps"])]
    times = []
    trainer.train(prompts, on_step=lambda s, t, m, texts: times.append(m["seconds_per_step"]))
    rank = accelerator.process_index if accelerator else 0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(spec["out"] + f".{rank}").write_text(json.dumps({"times": times, "peak_rss_mib": peak_mib}))
    if accelerator:
        accelerator.wait_for_everyone()
        accelerator.end_training()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from evalsite.modelzoo import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "tiny"))
        results = {}
        for processes in (1, 2):
            spec = Path(tmp) / f"spec{processes}.json"
            out = str(Path(tmp) / f"out{processes}")
            spec.write_text(json.dumps({"model": model, "batch": args.batch, "steps": args.steps,
                                        "processes": processes, "out": out}))
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            cmd = ([sys.executable, __file__, "--worker", str(spec)] if processes == 1 else
                   [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    __file__, "--worker", str(spec)])
            subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
            ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(processes)]
            steady = [max(r["times"][s] for r in ranks) for s in range(1, args.steps)]  # step 0 warms up
            results[processes] = {"samples_per_s": args.batch * len(steady) / sum(steady),
                                  "peak_rss_mib": [round(r["peak_rss_mib"]) for r in ranks]}
        ratio = results[2]["samples_per_s"] / results[1]["samples_per_s"]
        print(f"RESULT rl_step tiny-gpt2 batch={args.batch} steps={args.steps} cores={os.cpu_count()}: "
              f"1 proc {results[1]['samples_per_s']:.1f} samples/s, 2 procs {results[2]['samples_per_s']:.1f} samples/s "
              f"(x{ratio:.2f}); peak RSS MiB per process: 1 proc {results[1]['peak_rss_mib']}, "
              f"2 procs {results[2]['peak_rss_mib']}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
