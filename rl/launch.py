"""Training jobs on several processes: the Celery task starts ``accelerate launch``, this module runs in each.

A job whose launch section asks for more than one process (``processes``, ``accelerate_config``;
rl/params.py checks them) does not train in the worker. ``run_launched`` (in the worker) writes
what the processes need -- the trainer's settings and the data, already read from the
database -- to ``spec.json`` in the job's work_dir, and starts, in a new process group,

    python -m accelerate.commands.launch --num_processes N [--config_file F] -m rl.launch spec.json

(on a machine without CUDA: ``python -m torch.distributed.run --standalone --nproc_per_node N``, the
launcher ``accelerate launch`` itself runs for ``--multi_gpu``; its ``--cpu`` starts one process only).

Each process runs ``main`` below: it builds an ``Accelerator`` and calls the same training loop
as a single-process job, with that accelerator (rl/distributed.py: each trains on its share of
every global batch). The processes never touch the database or Celery.

How they report -- a file, not the database: the main process appends one JSON object per line to
``events-<attempt>.jsonl`` (``{"metric": ...}``, ``{"progress": ...}``, ``{"log": ...}``,
``{"done": ...}``), flushing each; the worker reads the new complete lines every half second and
relays them with the job's own ``ctx.metric`` / ``ctx.progress`` / ``ctx.log``. So the job's
database rows are written by one process only, as for single-process jobs; ``ctx.progress`` is
where the worker learns of a cancel; and a half-written last line (a killed process) is simply
not read.

Stopping. Cancel: the worker creates ``stop`` in the work_dir; after each step the processes
agree (one tiny all-reduce) whether the main one has seen it, so all stop after the same step;
RL writes its checkpoint and they exit. Past a grace period the worker sends SIGTERM and then
SIGKILL to the whole process group. A worker that dies: every training process checks once a
second that the worker's pid (in the spec) is alive and exits at once when it is not (the
launcher then exits too); and each process asks Linux (prctl PR_SET_PDEATHSIG) to be killed when
its own parent, the launcher, dies. The job is then failed by the workers' sweep and, for RL,
resumed from its last checkpoint in work_dir, as any job whose worker died.

The trained weights go to ``work_dir/trained`` (SFT, reward model) or the RL checkpoint there;
the worker loads them back and registers them exactly as a single-process job does.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from evalsite.processes import stop_group

STOP_GRACE_SECONDS = 60       # a cancelled run's time to finish its step and write its checkpoint
POLL_SECONDS = 0.5


# --- the command ------------------------------------------------------------------------
def launch_command(processes, spec_path, *, config_file="", cpu=None, python=None):
    """The command line that starts ``processes`` processes running ``rl.launch``: ``accelerate launch``
    on GPUs; on CPUs torch's own launcher (which ``accelerate launch`` uses for GPUs), since
    ``accelerate launch --cpu`` starts a single process whatever ``--num_processes`` says. Each
    process then finds its rank in the environment; ``--standalone`` picks a free port."""
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    python = python or sys.executable
    if cpu:
        cmd = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(int(processes))]
    else:
        cmd = [python, "-m", "accelerate.commands.launch", "--num_processes", str(int(processes))]
        cmd += ["--config_file", str(config_file)] if config_file else ["--multi_gpu"]
    return cmd + ["-m", "rl.launch", str(spec_path)]


def other_machine_commands(processes, spec_path, config_file, python="python"):
    """For a config of several machines (``num_machines`` > 1): the command to start on each other
    machine, rank 1 to n-1 (the job's worker launches machine 0, which the config names as
    ``main_process_ip``). Empty for one machine."""
    if not config_file:
        return []
    from accelerate.commands.config.config_args import load_config_from_file

    machines = int(load_config_from_file(config_file).num_machines or 1)
    return [[python, "-m", "accelerate.commands.launch", "--config_file", str(config_file), "--machine_rank", str(rank),
             "--num_processes", str(int(processes)), "-m", "rl.launch", str(spec_path)] for rank in range(1, machines)]


def resolve_config(path):
    """An Accelerate config path made absolute: as given, or else relative to the project root."""
    if not path:
        return ""
    p = Path(path)
    if not p.is_absolute():
        p = p.resolve() if p.exists() else Path(__file__).resolve().parent.parent / p
    return str(p)


# --- the worker's side ------------------------------------------------------------------
class _Events:
    """Reads the complete lines the main training process appended since the last read."""

    def __init__(self, path):
        self.path, self.offset, self.rest = Path(path), 0, b""

    def read(self):
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()  # an unfinished line waits for the next read
        return [json.loads(line) for line in lines if line.strip()]


def run_launched(ctx, kind, spec):
    """Run ``kind`` (sft, reward_model, rl) on ``spec["config"]["processes"]`` processes; relay their
    reports to ``ctx``; return the main process's ``done`` object. Raises JobCancelled on cancel."""
    from evalsite.jobs.runtime import JobCancelled, JobError

    work = ctx.work_dir
    attempt = getattr(ctx.job, "attempts", 1) or 1
    events_path = work / f"events-{attempt}.jsonl"
    stop_path = work / "stop"
    for path in (events_path, stop_path):
        path.unlink(missing_ok=True)
    spec = {**spec, "kind": kind, "work_dir": str(work), "events": str(events_path), "stop": str(stop_path),
            "watch_pid": os.getpid(), "watch_host": socket.gethostname()}
    spec_path = work / "spec.json"
    tmp = spec_path.with_suffix(".partial")
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, spec_path)
    config = spec["config"]
    config_file = resolve_config(config.get("accelerate_config"))
    cmd = launch_command(config["processes"], spec_path, config_file=config_file)
    ctx.log(f"launching {config['processes']} processes: {' '.join(cmd)}")
    for other in other_machine_commands(config["processes"], spec_path, config_file, python=sys.executable):
        ctx.log(f"start on machine {other[other.index('--machine_rank') + 1]} (same paths): {' '.join(other)}")
    out_path = work / f"launch-{attempt}.log"
    root = Path(__file__).resolve().parent.parent
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    events, done, fraction = _Events(events_path), None, 0.0

    def relay():
        nonlocal done, fraction
        for e in events.read():
            if "metric" in e:
                ctx.metric(e["metric"]["step"], **e["metric"]["values"])
            if "log" in e:
                ctx.log(e["log"])
            if "done" in e:
                done = e["done"]
            if "progress" in e:
                fraction = e["progress"]["fraction"]
                ctx.progress(fraction, e["progress"]["message"])

    try:
        while True:
            finished = proc.poll() is not None
            relay()
            if finished:
                break
            ctx.progress(fraction)  # where a cancel request is seen
            time.sleep(POLL_SECONDS)
    except JobCancelled:
        stop_path.touch()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        for e in events.read():
            if "log" in e:
                ctx.log(e["log"])
        stop_group(proc)
        raise
    except BaseException:
        stop_group(proc)
        raise
    stop_group(proc, grace=1)  # ranks the launcher left behind, if any
    if proc.returncode != 0 or done is None:
        tail = out_path.read_text(errors="replace")[-3000:]
        raise JobError(f"the {config['processes']} training processes exited with status {proc.returncode}:\n{tail}")
    return done


# --- each training process's side -------------------------------------------------------
class Stopped(Exception):
    """The job was cancelled: every process stops after the same step."""


def _die_with(watch_pid, watch_host):
    """Exit when the worker (``watch_pid`` on ``watch_host``; other machines cannot see it) or this
    process's parent (the launcher) is gone."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the pid watch below still works
        pass
    if watch_host != socket.gethostname():
        return

    def watch():
        while True:
            try:
                os.kill(watch_pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:
                pass
            time.sleep(1)

    threading.Thread(target=watch, daemon=True, name="watch-worker").start()


class _Reporter:
    """The main process's events file (module docstring); other processes report nothing."""

    def __init__(self, spec, accelerator):
        self.main = accelerator.is_main_process
        self.stop_path = Path(spec["stop"])
        self.accelerator = accelerator
        self.file = open(spec["events"], "a") if self.main else None

    def emit(self, **event):
        if self.main:
            self.file.write(json.dumps(event) + "\n")
            self.file.flush()

    def log(self, text):
        self.emit(log=str(text))

    def step(self, step, total, metrics, message):
        """Report a finished step; raise Stopped on every process if the job was cancelled."""
        from rl.distributed import any_process

        self.emit(metric={"step": step, "values": metrics})
        self.emit(progress={"fraction": (step + 1) / total, "message": message})
        if any_process(self.main and self.stop_path.exists(), self.accelerator):
            raise Stopped()


def main(spec_path):
    spec = json.loads(Path(spec_path).read_text())
    _die_with(spec["watch_pid"], spec.get("watch_host", socket.gethostname()))
    import torch
    import transformers
    from accelerate import Accelerator

    from rl.distributed import is_main

    transformers.logging.set_verbosity_error()
    # on CPUs Accelerate finds the ranks torch's launcher set only when told it runs on the CPU
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.num_processes != int(os.environ.get("WORLD_SIZE", 1)):
        raise RuntimeError(f"Accelerate sees {accelerator.num_processes} processes, the launcher started "
                           f"{os.environ.get('WORLD_SIZE')}")
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    reporter = _Reporter(spec, accelerator)
    reporter.log(f"world of {accelerator.num_processes} processes ({accelerator.distributed_type}, "
                 f"{accelerator.device.type})")
    kind, work = spec["kind"], Path(spec["work_dir"])
    try:
        done = {"sft": _sft, "reward_model": _reward_model, "rl": _rl}[kind](spec, accelerator, reporter, work)
    except Stopped:
        done = None
        reporter.log("stopped at the user's request")
    if is_main(accelerator) and done is not None:
        reporter.emit(done=done)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # Leave without the interpreter's teardown: gloo's threads, destroyed at exit while the other
    # process tears down too, can abort ("terminate called without an active exception") and turn
    # a finished run into a failed one. Everything this process wrote is flushed already.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _trained_on(accelerator):
    """Where a trainable model loads: a sharded engine (FSDP, DeepSpeed) moves its shards to the
    device itself, so the whole model stays on the CPU until then."""
    from rl.distributed import is_sharded

    return "cpu" if is_sharded(accelerator) else accelerator.device


def _sft(spec, accelerator, reporter, work):
    from rl.distributed import save_trained
    from rl.modeling import load_causal_lm, load_tokenizer
    from rl.sft import SFTConfig, train_sft

    config = SFTConfig(**spec["config"])
    tokenizer, model = load_tokenizer(spec["start"]), load_causal_lm(spec["start"], _trained_on(accelerator))

    def on_step(step, total, metrics):
        reporter.step(step, total, metrics, f"step {step + 1}/{total}, loss {metrics['loss']:.4f}")

    losses = train_sft(model, tokenizer, spec["prompts"], spec["responses"], config, on_step=on_step,
                       accelerator=accelerator, end_ids=spec.get("end_ids"))
    save_trained(model, tokenizer, work / "trained", accelerator)
    return {"losses": losses, "trained": str(work / "trained")}


def _reward_model(spec, accelerator, reporter, work):
    from rl.distributed import save_trained
    from rl.modeling import seed_everything
    from rl.reward_model import Pair, RewardModelConfig, RewardScorer, train_reward_model

    config = RewardModelConfig(**spec["config"])
    seed_everything(config.seed)  # the fresh head, as a job in one process draws it (then broadcast)
    scorer = RewardScorer.from_folder(spec["start"], device=_trained_on(accelerator), max_length=config.max_length)
    pairs = [Pair(*row) for row in spec["pairs"]]

    def on_step(step, total, metrics):
        reporter.step(step, total, metrics, f"step {step + 1}/{total}, loss {metrics['loss']:.4f}")

    train_reward_model(scorer, pairs, config, on_step=on_step, accelerator=accelerator)
    save_trained(scorer.model, scorer.tokenizer, work / "trained", accelerator)
    return {"trained": str(work / "trained")}


def _rl(spec, accelerator, reporter, work):
    from rl.reinforce import ReinforceTrainer, RLConfig

    config = RLConfig.from_dict(spec["config"])
    reward = spec["reward"]
    if reward["kind"] == "reward_model":
        from rl.modeling import seed_everything
        from rl.reward_model import RewardScorer

        seed_everything(config.seed)  # a folder without a trained head gets the same fresh one everywhere

        reward_fn = RewardScorer.from_folder(reward["path"], device=accelerator.device, max_length=reward["max_length"])
    else:
        from labeling.direct import DirectScorer

        reward_fn = DirectScorer.from_pretrained(reward["labeler_model"], reward["task"]).rewards
    resume = work / "checkpoint" if ReinforceTrainer.checkpoint_step(work) is not None else None
    trainer = ReinforceTrainer.from_sft(spec["start"], reward_fn, config, resume_from=resume, accelerator=accelerator,
                                        stop_strings=spec.get("stop_strings", ()),
                                        extra_stop_ids=spec.get("extra_stop_ids", ()))
    total = trainer.total_steps(len(spec["prompts"]))
    reporter.log(f"resuming at step {trainer.completed_steps}/{total} from {resume}" if resume
                 else f"RL on {accelerator.num_processes} processes, {len(spec['prompts'])} prompts, {total} steps")

    def on_step(step, total, metrics, texts):
        if step % max(1, config.save_every) == 0:
            reporter.log(f"step {step}: reward {metrics['reward_mean']:.3f}, KL {metrics['kl']:.3f}; "
                         f"sample: {texts[0][:200]!r}")
        reporter.step(step, total, metrics, f"step {step + 1}/{total}, reward {metrics['reward_mean']:.3f}, "
                                            f"KL {metrics['kl']:.3f}")

    try:
        trainer.train(spec["prompts"], spec["contexts"], on_step=on_step, checkpoint_dir=work)
    except Stopped:
        from rl.distributed import any_process

        # every process takes part in writing a checkpoint (sharded weights are gathered)
        if any_process(accelerator.is_main_process
                       and trainer.completed_steps != ReinforceTrainer.checkpoint_step(work), accelerator):
            trainer.save_checkpoint(work)
        reporter.log(f"checkpoint at step {trainer.completed_steps} kept for resuming")
        raise
    return {"steps": trainer.completed_steps}


if __name__ == "__main__":
    main(sys.argv[1])
