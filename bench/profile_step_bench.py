"""Where one RL step, one reward-model step and one labeling batch spend their time: torch.profiler.

Each part runs once untimed (a warm-up: allocations, kernel caches, compilation) and once under
the profiler, with the same settings as bench/rl and bench/labeling (the bench's prompts and
reward function; RL generates exactly ``--response-tokens`` tokens). For each part it prints

  * the top ops by self time on the device (self CPU time on a CPU), from the profiler;
  * a phase breakdown of the step's wall time: RL generate (sampling) / score (the reward
    function) / backward / optimizer (gradient clipping and the optimizer step) / other (the
    reference, value and policy forwards, batching, metrics); the reward model score (its
    forward over the pairs) / backward / optimizer / other; labeling tokenize / score (the
    forwards) / other. Host seconds are measured around each phase; on a GPU the host can run
    ahead of the device, so the device seconds (the kernels launched inside the phase, from the
    profiler) are shown too;
  * host syncs per phase on CUDA (``torch.cuda.set_sync_debug_mode``: every call that waits for
    the GPU: ``.item()``, ``.tolist()``, ``bool(tensor)``, a copy to the CPU, ...). A CPU has no
    syncs to count; scalar reads (``.item()``, ``float()``, ``bool()`` of a tensor: syncs where
    the tensor is on a GPU) are counted on both.

Ends with a RESULT line: each part's seconds and its phases' shares of them.

    bench/profile_step [--device cpu|cuda] [--model-shape tiny|135m|1.7b] [--quick] [--parts rl,rm,label]
                       [--threads N] [--batch B] [--response-tokens T] [--rows N] [--trace DIR]

--model-shape: SmolLM2-135M-Instruct's or -1.7B-Instruct's shape (bench/shapes.py: the real weights
where they are in var/models, else random weights of that shape; nothing is downloaded), or a tiny
one. --trace DIR also writes each part's Chrome trace there (chrome://tracing, Perfetto).
"""
import argparse
import contextlib
import functools
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHASES = {"rl": ("generate", "score", "backward", "optimizer"), "rm": ("score", "backward", "optimizer"),
          "label": ("tokenize", "score")}
TITLES = {"rl": "RL step (REINFORCE: sample, score, value and policy updates)",
          "rm": "reward-model step (packed pair rows, AdamW)", "label": "labeling batch (fast path)"}


class StopRun(Exception):
    """Ends a training loop from its on_step callback."""


class Phases:
    """Named phases of a step: host seconds, CUDA syncs and a profiler range (``phase:NAME``) each.
    A phase inside another one counts for the outer one only."""

    def __init__(self):
        self.seconds, self.syncs = defaultdict(float), Counter()
        self.current, self._open = None, None

    def start(self, name):
        if self.current is not None:
            return False
        import torch

        self.current = name
        self._open = (time.perf_counter(), torch.profiler.record_function(f"phase:{name}"))
        self._open[1].__enter__()
        return True

    def stop(self):
        started, scope = self._open
        scope.__exit__(None, None, None)
        self.seconds[self.current] += time.perf_counter() - started
        self.current = self._open = None

    @contextlib.contextmanager
    def phase(self, name):
        outer = self.start(name)
        try:
            yield
        finally:
            if outer:
                self.stop()

    def wrap(self, name, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return run

    def reset(self):
        self.seconds.clear()
        self.syncs.clear()


@contextlib.contextmanager
def instrumented(phases):
    """backward, gradient clipping and optimizer steps become phases wherever they are called."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    backward, clip = torch.Tensor.backward, torch.nn.utils.clip_grad_norm_
    torch.Tensor.backward = phases.wrap("backward", backward)
    torch.nn.utils.clip_grad_norm_ = phases.wrap("optimizer", clip)
    opened = []  # per optimizer step: whether it opened the phase (not when inside another one)

    def before_step(*args):
        opened.append(phases.start("optimizer"))

    def after_step(*args):
        if opened.pop():
            phases.stop()

    pre = register_optimizer_step_pre_hook(before_step)
    post = register_optimizer_step_post_hook(after_step)
    try:
        yield
    finally:
        torch.Tensor.backward, torch.nn.utils.clip_grad_norm_ = backward, clip
        pre.remove()
        post.remove()


@contextlib.contextmanager
def counting_syncs(phases, device):
    """On CUDA: every synchronising call, counted for the phase it happens in ("other" outside)."""
    import torch

    if device.type != "cuda":
        yield
        return
    shown = warnings.showwarning

    def show(message, category, *args, **kwargs):
        if "synchroniz" in str(message).lower():
            phases.syncs[phases.current or "other"] += 1
        else:
            shown(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = shown


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the three parts: each returns (warm-up, profiled step) ------------------------------------
def rl_part(a, model, device, phases):
    from bench.rl_bench import length_reward, prompts_for
    from rl.modeling import encode_left_truncated
    from rl.reinforce import ReinforceTrainer, RLConfig

    cfg = RLConfig(batch_size=a.batch, epochs=1, max_response_tokens=a.response_tokens, max_prompt_tokens=512,
                   learning_rate=1e-5, beta=0.05, temperature=0.9, optimizer="adamw", shuffle=False)
    trainer = ReinforceTrainer.from_sft(model, lambda contexts, texts: length_reward(texts), cfg, device=device)
    trainer.stop_ids = []  # exactly response_tokens tokens, as bench/rl
    trainer.sample = phases.wrap("generate", trainer.sample)
    trainer.reward_fn = phases.wrap("score", trainer.reward_fn)
    prompts = prompts_for(a.batch, a.prompt_words)
    ids = encode_left_truncated(trainer.tokenizer, prompts, cfg.max_prompt_tokens)
    return (lambda: trainer.step(ids, prompts, 0)), (lambda: trainer.step(ids, prompts, 1))


def rm_part(a, model, device, phases):
    from bench.rl_bench import RM_BAD, RM_GOOD, prompts_for
    from rl.reward_model import Pair, RewardModelConfig, RewardScorer, train_reward_model

    pairs = [Pair(p, RM_GOOD, RM_BAD, 1.0) for p in prompts_for(2 * a.batch, a.prompt_words)]
    scorer = RewardScorer.from_folder(model, device, max_length=512 + 32)
    scorer.forward_pairs = phases.wrap("score", scorer.forward_pairs)
    cfg = RewardModelConfig(learning_rate=1e-5, epochs=1, batch_size=a.batch, max_length=512 + 32, optimizer="adamw")
    state = {}

    def first_step_only(step, total, metrics):  # the warm-up: one step, then stop
        raise StopRun

    def warm():
        with contextlib.suppress(StopRun):
            train_reward_model(scorer, pairs, cfg, on_step=first_step_only)

    def second_step(step, total, metrics):
        # the profiled run: the second step of a run, the optimizer's state already there
        if step == 0:
            sync(device)
            phases.reset()
            state["start"] = time.perf_counter()
            state["profiler"].start()
        else:
            sync(device)
            state["seconds"] = time.perf_counter() - state["start"]
            raise StopRun

    def profiled(profiler):
        state["profiler"] = profiler
        with contextlib.suppress(StopRun):
            train_reward_model(scorer, pairs, cfg, on_step=second_step)
        return state["seconds"]

    return warm, profiled


def label_part(a, model, device, phases):
    import os

    from bench.labeling_bench import load_pairs, synthetic_rows
    from labeling.backends import LocalBackend, LocalBackendConfig
    from labeling.scoring import LabelerSettings, Pair, PreferenceLabeler

    csv_path = Path(os.environ.get("SHARED_DATA_DIR", str(ROOT.parent / "shared" / "data"))) / "tldr-oai1b-judged.csv"
    n = a.label_batch
    rows = load_pairs(csv_path, n, 0)[0] if csv_path.exists() else synthetic_rows(n)
    pairs = [Pair(c, x, y) for c, x, y, _ in rows]
    backend = LocalBackend(LocalBackendConfig(str(model), batch_size=n, device=str(device)))
    backend.encode = phases.wrap("tokenize", backend.encode)
    backend.last_logprobs = phases.wrap("score", backend.last_logprobs)
    labeler = PreferenceLabeler(backend, LabelerSettings(task="summarization", variant="base"))

    def run():
        backend._prefix = None  # each run computes its shared prefix, as bench/labeling's
        labeler.label(pairs)

    return run, run


PARTS = {"rl": rl_part, "rm": rm_part, "label": label_part}


def profile_part(name, a, model, device, rows):
    import torch
    from torch.profiler import ProfilerActivity, profile

    phases = Phases()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with instrumented(phases):
        warm, step = PARTS[name](a, model, device, phases)
        warm()
        sync(device)
        phases.reset()
        with counting_syncs(phases, device):
            if name == "rm":  # the loop starts the profiler itself, at its second step
                prof = profile(activities=activities)
                seconds = step(prof)
                prof.stop()
            else:
                with profile(activities=activities) as prof:
                    start = time.perf_counter()
                    step()
                    sync(device)
                    seconds = time.perf_counter() - start
    if a.trace:
        Path(a.trace).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(a.trace) / f"{name}.json"))

    on_device = device.type == "cuda"
    sort = "self_device_time_total" if on_device else "self_cpu_time_total"
    print(f"\n== {TITLES[name]}: {seconds:.3f} s")
    print(f"top ops by {'self CUDA' if on_device else 'self CPU'} time:")
    print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))

    averages = {e.key: e for e in prof.key_averages() if e.key.startswith("phase:")}
    scalar_reads = Counter()
    for event in prof.events():
        if event.name == "aten::_local_scalar_dense":
            parent = event.cpu_parent
            while parent is not None and not parent.name.startswith("phase:"):
                parent = parent.cpu_parent
            scalar_reads[parent.name[len("phase:"):] if parent is not None else "other"] += 1
    print(f"{'phase':10s} {'host s':>8s} {'share':>6s} {'device s':>9s} {'syncs':>6s} {'scalar reads':>13s}")
    shares = {}
    for phase in PHASES[name] + ("other",):
        host = phases.seconds.get(phase, 0.0) if phase != "other" else seconds - sum(phases.seconds.values())
        shares[phase] = host / seconds
        event = averages.get(f"phase:{phase}")
        device_s = getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0)) / 1e6 if event else 0.0
        syncs = str(phases.syncs.get(phase, 0)) if on_device else "-"
        print(f"{phase:10s} {host:8.3f} {100 * shares[phase]:5.1f}% "
              f"{device_s if on_device else float('nan'):9.3f} {syncs:>6s} {scalar_reads.get(phase, 0):13d}")
    total_syncs = sum(phases.syncs.values()) if on_device else None
    if on_device:
        print(f"host syncs in the step: {total_syncs}")
    else:
        print("host syncs: a CPU has none to count (run with --device cuda); scalar reads are counted above")
    return seconds, shares, total_syncs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    ap.add_argument("--model-shape", default="135m", choices=["tiny", "135m", "1.7b"])
    ap.add_argument("--quick", action="store_true", help="bench/rl --quick's sizes: 4 samples or pairs, 16 tokens")
    ap.add_argument("--parts", default="rl,rm,label", help="which of rl, rm, label to profile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="RL samples / reward-model pairs per step")
    ap.add_argument("--response-tokens", type=int, default=None)
    ap.add_argument("--prompt-words", type=int, default=None, help="prompts keep their last N words")
    ap.add_argument("--label-batch", type=int, default=None, help="pairs in the labeling batch")
    ap.add_argument("--rows", type=int, default=15, help="rows of each top-ops table")
    ap.add_argument("--trace", default=None, help="a folder for Chrome traces (one per part)")
    a = ap.parse_args()
    a.batch = a.batch or (4 if a.quick else 16)
    a.response_tokens = a.response_tokens or (16 if a.quick else 64)
    a.prompt_words = a.prompt_words or (40 if a.quick else 120)
    a.label_batch = a.label_batch or (4 if a.quick else 8)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    from bench.shapes import model_of_shape

    model, weights = model_of_shape(a.model_shape, device=device)
    print(f"model {model.name} ({weights} weights), device {device}, threads {torch.get_num_threads()}; RL/RM batch "
          f"{a.batch}, response tokens {a.response_tokens}, prompts cut to {a.prompt_words} words; labeling batch "
          f"{a.label_batch} pairs")
    fields = {"device": device.type, "model_shape": a.model_shape, "weights": weights}
    for name in parts:
        seconds, shares, syncs = profile_part(name, a, model, device, a.rows)
        fields[f"{name}_s"] = f"{seconds:.3f}"
        fields.update({f"{name}_{phase}": f"{share:.3f}" for phase, share in shares.items()})
        if syncs is not None:
            fields[f"{name}_syncs"] = syncs
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
