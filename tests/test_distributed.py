"""Training on two processes (accelerate launch --cpu, gloo) through a real Celery worker: the weights
equal a single-process run over the same global batches; cancel and a killed worker leave no
process behind and RL resumes its step count. Shipped Accelerate configs parse and launch right.

Tolerance: AdamW in float32. The two runs differ only in float rounding (per-share sums added by an
all-reduce instead of in one backward, and padding of smaller micro-batches), so after a few steps
of lr 1e-3 every weight agrees within 1e-4 -- a tenth of one step's largest move -- while a real
difference (one share's gradient lost, or averaged twice) moves weights by about lr per step.
"""
import importlib.util
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from evalsite.models import Comparison, Dataset, Policy, Prompt, Task
from evalsite.jobs.models import Job, JobMetric
from rl.models import RewardModel
from evalsite.jobs import runtime as jobs
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def toy(db, tiny_model_dir):
    task = Task.objects.get(slug="summarization")
    dataset = Dataset.objects.create(name="toy", split="train", task=task)
    prompts = [Prompt.objects.create(dataset=dataset, external_id=f"p{i}", context=f"say {i} the quick brown fox",
                                     reference=f" the answer is {i}" + " and more" * (i % 3)) for i in range(8)]
    base = Policy.objects.create(name="tiny base", checkpoint_dir=str(tiny_model_dir), base_model=str(tiny_model_dir))
    return {"dataset": dataset, "prompts": prompts, "base": base}


def _wait_status(job, status, worker, timeout=240):
    wait_for(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, timeout=timeout,
             message=f"{job.kind} job to finish")
    job.refresh_from_db()
    assert job.status == status, (job.error, job.log[-3000:], worker.read_log()[-3000:])
    return job


def _submit(kind, params, capture):
    with capture(execute=True):
        return jobs.submit(kind, params)


def _max_diff(model_a, model_b):
    b = dict(model_b.named_parameters())
    return max(float((p.detach() - b[n].detach()).abs().max()) for n, p in model_a.named_parameters())


def _training_pids(marker):
    """Pids of processes whose command line mentions ``marker`` (the job's spec file)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _spec_of(job):
    from evalsite.jobs.runtime import JobContext

    return str(JobContext(job=Job.objects.get(pk=job.pk)).work_dir / "spec.json")


@pytest.mark.worker
@pytest.mark.slow
def test_distributed_sft_and_reward_model_equal_one_process(toy, tiny_model_dir, start_worker,
                                                             django_capture_on_commit_callbacks):
    from rl.data import policy_input
    from rl.modeling import load_causal_lm, load_tokenizer
    from rl.reward_model import Pair, RewardModelConfig, RewardScorer, train_reward_model
    from rl.sft import SFTConfig, train_sft

    worker = start_worker(extra_env=ENV)
    ds, base = toy["dataset"], toy["base"]
    sft_params = {"policy_id": base.pk, "dataset_id": ds.pk, "name": "tiny SFT x2", "epochs": 2, "batch_size": 4,
                  "learning_rate": 1e-3, "optimizer": "adamw", "processes": 2, "gradient_accumulation_steps": 2}
    job = _wait_status(_submit("sft", sft_params, django_capture_on_commit_callbacks), "succeeded", worker)
    assert "launching 2 processes" in job.log and "world of 2 processes" in job.log
    assert list(JobMetric.objects.filter(job=job).order_by("step").values_list("step", flat=True)) == [0, 1, 2, 3]
    two = load_causal_lm(Policy.objects.get(pk=job.result["policy_id"]).checkpoint_dir, "cpu")

    prompts = sorted(toy["prompts"], key=lambda x: x.pk)
    one = load_causal_lm(tiny_model_dir, "cpu")
    config = SFTConfig(epochs=2, batch_size=4, learning_rate=1e-3, optimizer="adamw", gradient_accumulation_steps=2)
    norms = []
    losses = train_sft(one, load_tokenizer(tiny_model_dir), [policy_input(x) for x in prompts],
                       [x.reference for x in prompts], config, on_step=lambda s, t, m: norms.append(m["grad_norm"]))
    moved = _max_diff(one, load_causal_lm(tiny_model_dir, "cpu"))
    assert moved > 10 * TOLERANCE  # training moved the weights: the comparison can fail
    assert _max_diff(one, two) < TOLERANCE
    logged = JobMetric.objects.filter(job=job).order_by("step").values_list("values__loss", flat=True)
    assert list(logged) == pytest.approx(losses, rel=1e-4)
    # AdamW after clipping hardly sees a gradient's scale (averaged once too often); the norm does
    logged = JobMetric.objects.filter(job=job).order_by("step").values_list("values__grad_norm", flat=True)
    assert list(logged) == pytest.approx(norms, rel=1e-4)

    # reward model on human labels (the longer response wins), two processes against one
    for i, pr in enumerate(prompts):
        Comparison.objects.create(prompt=pr, response_a=" yes" * (1 + i % 3), response_b=" no",
                                  human_preference="first" if i % 3 else "second", human_source="dataset")
    rm_params = {"policy_id": base.pk, "name": "tiny RM x2", "labels": "human", "eval_fraction": 0.0,
                 "batch_size": 4, "epochs": 2, "learning_rate": 1e-3, "optimizer": "adamw", "processes": 2}
    rm_job = _wait_status(_submit("reward_model", rm_params, django_capture_on_commit_callbacks), "succeeded", worker)
    rm_two = RewardScorer.from_folder(RewardModel.objects.get(pk=rm_job.result["reward_model_id"]).checkpoint_dir, "cpu")
    from rl.data import preference_pairs
    from rl.params import validate_reward_model

    train, _ = preference_pairs(validate_reward_model({**rm_params, "name": "another"}))
    from rl.modeling import seed_everything

    seed_everything(0)  # the fresh head: launched processes seed with the config's seed before loading
    rm_one, norms = RewardScorer.from_folder(tiny_model_dir, "cpu"), []
    train_reward_model(rm_one, [Pair(x.prompt, x.response_a, x.response_b, x.p_first) for x in train],
                       RewardModelConfig(batch_size=4, epochs=2, learning_rate=1e-3, optimizer="adamw"),
                       on_step=lambda s, t, m: norms.append(m["grad_norm"]))
    assert _max_diff(rm_one.model, RewardScorer.from_folder(tiny_model_dir, "cpu").model) > 10 * TOLERANCE
    assert _max_diff(rm_one.model, rm_two.model) < TOLERANCE
    logged = JobMetric.objects.filter(job=rm_job).order_by("step").values_list("values__grad_norm", flat=True)
    assert list(logged) == pytest.approx(norms, rel=1e-4)


@pytest.mark.worker
@pytest.mark.slow
def test_distributed_rl_equals_one_process_and_survives_cancel_and_kill(toy, tiny_model_dir, start_worker,
                                                                        django_capture_on_commit_callbacks):
    from rl.data import policy_input
    from rl.modeling import load_causal_lm
    from rl.reinforce import ReinforceTrainer, RLConfig
    from rl.reward_model import RewardScorer

    rm = RewardModel.objects.create(name="untrained RM", labels="ai", checkpoint_dir=str(tiny_model_dir))
    worker = start_worker(extra_env=ENV)
    ds, base = toy["dataset"], toy["base"]
    common = {"policy_id": base.pk, "dataset_id": ds.pk, "reward_model_id": rm.pk, "batch_size": 4,
              "max_response_tokens": 4, "learning_rate": 1e-3, "optimizer": "adamw", "processes": 2}

    # 1. equal weights: 4 steps on two processes against one process sampling the same rows
    job = _wait_status(_submit("rl", {**common, "name": "rl x2", "epochs": 2, "save_every": 2},
                               django_capture_on_commit_callbacks), "succeeded", worker)
    two = load_causal_lm(Policy.objects.get(pk=job.result["policy_id"]).checkpoint_dir, "cpu")
    prompts = sorted(toy["prompts"], key=lambda x: x.pk)
    config = RLConfig(batch_size=4, epochs=2, max_response_tokens=4, learning_rate=1e-3, optimizer="adamw")
    from rl.modeling import seed_everything

    seed_everything(0)  # the untrained reward head, drawn as the launched processes draw it
    reward = RewardScorer.from_folder(str(tiny_model_dir), "cpu", max_length=512 + 4)
    trainer = ReinforceTrainer.from_sft(str(tiny_model_dir), reward, config, device="cpu")
    steps = []
    trainer.train([policy_input(x) for x in prompts], on_step=lambda s, t, m, texts: steps.append(m))
    assert _max_diff(trainer.policy, load_causal_lm(tiny_model_dir, "cpu")) > 10 * TOLERANCE
    assert _max_diff(trainer.policy, two) < TOLERANCE
    logged = list(JobMetric.objects.filter(job=job).order_by("step"))
    for key in ("reward_mean", "policy_grad_norm", "value_grad_norm"):
        assert [m.values[key] for m in logged] == pytest.approx([m[key] for m in steps], rel=1e-4, abs=1e-4), key

    # 2. cancel: the processes stop after one step, write the checkpoint and are all gone
    long = {**common, "name": "rl x2 long", "epochs": 1000, "save_every": 5}  # far longer than the test
    job = _submit("rl", long, django_capture_on_commit_callbacks)
    wait_for(lambda: JobMetric.objects.filter(job=job, step__gte=2).exists(), timeout=120, message="RL step 2")
    spec = _spec_of(job)
    assert len(_training_pids(spec)) >= 2  # the training processes (and the launcher)
    jobs.cancel(job)
    job = _wait_status(job, "cancelled", worker, timeout=120)
    assert "checkpoint at step" in job.log
    wait_for(lambda: not _training_pids(spec), timeout=15, message="no training process left after cancel")
    from evalsite.jobs.runtime import JobContext

    work = JobContext(job=job).work_dir
    saved = ReinforceTrainer.checkpoint_step(work)
    assert saved is not None and saved >= 3

    # 3. resume it, then SIGKILL the worker: its training processes die with it; the next worker resumes
    jobs.resume(job)
    wait_for(lambda: JobMetric.objects.filter(job=job, step__gte=saved + 1).exists(), timeout=120,
             message="the resumed RL to pass its checkpoint")
    job.refresh_from_db()
    assert f"resuming at step {saved}/" in job.log
    assert len(_training_pids(spec)) >= 2
    worker.kill()
    wait_for(lambda: not _training_pids(spec), timeout=15, message="no training process left after SIGKILL")
    assert Job.objects.get(pk=job.pk).status == "running"
    worker = start_worker(name=worker.name, extra_env=ENV)  # fails the orphaned job and resumes it
    wait_for(lambda: Job.objects.filter(pk=job.pk, attempts=3, status="running").exists()
             and Job.objects.get(pk=job.pk).log.count("resuming at step") == 2, timeout=180,
             message="the third attempt to resume from the checkpoint")
    assert "resuming at step 0/" not in Job.objects.get(pk=job.pk).log
    jobs.cancel(Job.objects.get(pk=job.pk))
    job = _wait_status(job, "cancelled", worker, timeout=120)
    wait_for(lambda: not _training_pids(spec), timeout=15, message="no training process left")


@pytest.mark.slow
def test_distributed_fsdp_on_cpus_equals_one_process(tiny_model_dir, tmp_path):
    """FSDP 2 on two CPU processes (gloo), with the environment ``accelerate launch`` gives them for
    configs/accelerate/fsdp.yaml (tests/distributed_fsdp_cpu.py says why its state is set by hand):
    SFT, the reward model and an RL run stopped and resumed from a checkpoint written under FSDP end
    with the weights of one process, written as plain Hugging Face folders."""
    import subprocess
    import sys

    from rl.modeling import load_causal_lm, load_tokenizer, seed_everything
    from rl.reinforce import ReinforceTrainer, RLConfig
    from rl.reward_model import RewardModelConfig, RewardScorer, train_reward_model
    from rl.sft import SFTConfig, train_sft
    from tests.distributed_fsdp_cpu import RL, RM, SFT, examples, launch_environment, pairs

    env = {**os.environ, **launch_environment(), **ENV}
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "tests.distributed_fsdp_cpu", str(tiny_model_dir), str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]

    prompts, responses = examples()
    one, metrics = load_causal_lm(tiny_model_dir, "cpu"), []
    train_sft(one, load_tokenizer(tiny_model_dir), prompts, responses, SFTConfig(**SFT),
              on_step=lambda step, total, m: metrics.append(m))
    assert _max_diff(one, load_causal_lm(tiny_model_dir, "cpu")) > 10 * TOLERANCE
    assert _max_diff(one, load_causal_lm(out / "sft", "cpu")) < TOLERANCE
    # AdamW after clipping hardly sees a gradient's scale; the norm before clipping does
    sharded = json.loads((out / "sft_metrics.json").read_text())
    for key in ("loss", "grad_norm"):
        assert [m[key] for m in sharded] == pytest.approx([m[key] for m in metrics], rel=1e-4), key

    seed_everything(0)
    rm_one = RewardScorer.from_folder(tiny_model_dir, "cpu")
    train_reward_model(rm_one, pairs(), RewardModelConfig(**RM))
    assert _max_diff(rm_one.model, RewardScorer.from_folder(tiny_model_dir, "cpu").model) > 10 * TOLERANCE
    assert _max_diff(rm_one.model, RewardScorer.from_folder(out / "rm", "cpu").model) < TOLERANCE

    seed_everything(0)
    reward = RewardScorer.from_folder(tiny_model_dir, "cpu", max_length=512 + 4)
    trainer = ReinforceTrainer.from_sft(tiny_model_dir, reward, RLConfig(**RL), device="cpu")
    trainer.train(prompts)  # without a stop
    assert _max_diff(trainer.policy, load_causal_lm(tiny_model_dir, "cpu")) > 10 * TOLERANCE
    assert _max_diff(trainer.policy, load_causal_lm(out / "rl", "cpu")) < TOLERANCE
    # the checkpoint is PyTorch's own format: it resumes on one process too
    state = torch.load(out / "rl-run" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 4 and set(state["policy_optimizer"]["state"]) == set(range(len(list(one.parameters()))))
    resumed = ReinforceTrainer.from_sft(tiny_model_dir, reward, RLConfig(**RL), device="cpu",
                                        resume_from=out / "rl-run" / "checkpoint")
    assert resumed.completed_steps == 4 and _max_diff(resumed.policy, trainer.policy) < TOLERANCE


def test_distributed_configs_parse_and_build_the_launch_command(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    from rl.launch import launch_command, resolve_config

    expected = {"multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}
    for name, engine in expected.items():
        path = resolve_config(f"configs/accelerate/{name}.yaml")
        assert Path(path) == ROOT / "configs" / "accelerate" / f"{name}.yaml"
        cluster = load_config_from_file(path)
        assert str(cluster.distributed_type).endswith(engine) and cluster.num_machines == 1
        cmd = launch_command(4, tmp_path / "spec.json", config_file=path, cpu=False, python="python")
        assert cmd == ["python", "-m", "accelerate.commands.launch", "--num_processes", "4", "--config_file", path,
                       "-m", "rl.launch", str(tmp_path / "spec.json")]
    assert load_config_from_file(resolve_config("configs/accelerate/fsdp.yaml")).fsdp_config["fsdp_version"] == 2
    assert load_config_from_file(resolve_config("configs/accelerate/deepspeed_zero3.yaml")).deepspeed_config[
        "zero_stage"] == 3
    assert launch_command(2, "s.json", cpu=True, python="py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rl.launch", "s.json"]
    assert launch_command(2, "s.json", cpu=False, python="py")[5] == "--multi_gpu"


def test_distributed_launch_settings_are_validated(toy, tmp_path):
    from django.core.exceptions import ValidationError

    from evalsite.experiments.pipeline import config_errors
    from rl.params import local_devices

    ds, base = toy["dataset"], toy["base"]
    devices, what = local_devices()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("distributed_type: [not, a, config\n")
    cases = [
        ({"processes": devices + 1}, "processes", f"more than the {devices} {what}"),
        ({"processes": 0}, "processes", "at least 1"),
        ({"accelerate_config": "configs/accelerate/nope.yaml"}, "accelerate_config", "does not exist"),
        ({"accelerate_config": str(bad_yaml)}, "accelerate_config", "is not an Accelerate config file"),
        ({"processes": 2, "batch_size": 1}, "batch_size", "smaller than the 2 processes"),
    ]
    # what this machine cannot run is said at submit (engine_errors below covers the other cases)
    if not torch.cuda.is_available():
        cases.append(({"accelerate_config": "configs/accelerate/fsdp.yaml"}, "accelerate_config",
                      "FSDP needs CUDA GPUs and this machine has none"))
    if importlib.util.find_spec("deepspeed") is None:
        cases.append(({"accelerate_config": "configs/accelerate/deepspeed_zero3.yaml"}, "accelerate_config",
                      "DeepSpeed is not installed in this environment (pip install deepspeed)"))
    for extra, field, text in cases:
        with pytest.raises(ValidationError) as e:
            jobs.submit("sft", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "s", **extra}, send=False)
        assert any(text in m for m in e.value.message_dict.get(field, [])), (extra, e.value.message_dict)
    assert Job.objects.count() == 0
    ok = jobs.submit("sft", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "s", "processes": 2,
                            "batch_size": 4, "accelerate_config": "configs/accelerate/multi_gpu.yaml"}, send=False)
    assert ok.params["processes"] == 2
    messages = config_errors({"rl": {"processes": 4, "accelerate_config": "configs/fsdp.yaml"},
                              "sft": {"processes": devices + 1}})
    assert any(m.startswith("rl: The Accelerate config file 'configs/fsdp.yaml' does not exist") for m in messages)
    assert any(m.startswith("sft: ") and f"more than the {devices} {what}" in m for m in messages)


def test_distributed_engine_errors_name_what_a_sharded_engine_cannot_run(monkeypatch, tmp_path):
    """On a machine with CUDA and DeepSpeed (faked here): the shipped FSDP config runs every loop with
    AdamW; Adafactor, FSDP 1, RAM-efficient loading, zero3_init_flag and RL under DeepSpeed are
    refused with the reason; without CUDA or DeepSpeed, that is said."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    from rl.params import engine_errors

    def variant(name, change):
        data = yaml.safe_load((ROOT / "configs" / "accelerate" / name).read_text())
        change(data)
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_config_from_file(str(path))

    fsdp = load_config_from_file(str(ROOT / "configs" / "accelerate" / "fsdp.yaml"))
    zero3 = load_config_from_file(str(ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml"))
    ddp = load_config_from_file(str(ROOT / "configs" / "accelerate" / "multi_gpu.yaml"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "deepspeed" else real_find_spec(n, *a))
    for kind in ("sft", "reward_model", "rl"):
        assert engine_errors("f", fsdp, kind, "adamw") == {} and engine_errors("d", ddp, kind, "adafactor") == {}
        assert "Adafactor cannot train sharded models" in engine_errors("f", fsdp, kind, "adafactor")["optimizer"]
    for kind in ("sft", "reward_model"):
        assert engine_errors("z", zero3, kind, "adamw") == {}
    assert "RL does not run under DeepSpeed" in engine_errors("z", zero3, "rl", "adamw")["accelerate_config"]
    fsdp1 = variant("fsdp.yaml", lambda d: d["fsdp_config"].update(fsdp_version=1))
    assert "set fsdp_version: 2" in engine_errors("f", fsdp1, "sft", "adamw")["accelerate_config"]
    eager = variant("fsdp.yaml", lambda d: d["fsdp_config"].update(fsdp_cpu_ram_efficient_loading=True))
    assert "fsdp_cpu_ram_efficient_loading: false" in engine_errors("f", eager, "sft", "adamw")["accelerate_config"]
    init = variant("deepspeed_zero3.yaml", lambda d: d["deepspeed_config"].update(zero3_init_flag=True))
    assert "zero3_init_flag: false" in engine_errors("z", init, "sft", "adamw")["accelerate_config"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "deepspeed" else real_find_spec(n, *a))
    message = engine_errors("z.yaml", zero3, "sft", "adamw")["accelerate_config"]
    assert message.startswith("z.yaml: DeepSpeed is not installed") and "DeepSpeed needs CUDA GPUs" in message
    assert "FSDP needs CUDA GPUs" in engine_errors("f.yaml", fsdp, "sft", "adamw")["accelerate_config"]


def test_distributed_two_machines_are_configured_in_the_accelerate_config(monkeypatch, tmp_path):
    """Several machines: the config file names them and machine 0 (the job's worker); the job's log
    gives each other machine its command; what cannot work is said at submit."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    from rl.launch import launch_command, other_machine_commands
    from rl.params import machines_errors

    def two_machines(**change):
        data = yaml.safe_load((ROOT / "configs" / "accelerate" / "multi_gpu.yaml").read_text())
        data.update({"num_machines": 2, "main_process_ip": "10.0.0.1", "main_process_port": 29500, **change})
        path = tmp_path / f"two-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    good = two_machines()
    assert launch_command(8, "spec.json", config_file=good, cpu=False, python="py") == [
        "py", "-m", "accelerate.commands.launch", "--num_processes", "8", "--config_file", good, "-m", "rl.launch",
        "spec.json"]
    assert other_machine_commands(8, "/shared/spec.json", good) == [
        ["python", "-m", "accelerate.commands.launch", "--config_file", good, "--machine_rank", "1", "--num_processes",
         "8", "-m", "rl.launch", "/shared/spec.json"]]
    assert other_machine_commands(8, "s.json", str(ROOT / "configs" / "accelerate" / "multi_gpu.yaml")) == []

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert machines_errors("two.yaml", load_config_from_file(good), 8, 2) == {}
    no_ip = load_config_from_file(two_machines(main_process_ip=None))
    assert "set main_process_ip" in machines_errors("two.yaml", no_ip, 8, 2)["accelerate_config"]
    rank1 = load_config_from_file(two_machines(machine_rank=1))
    assert "machine_rank must be 0" in machines_errors("two.yaml", rank1, 8, 2)["accelerate_config"]
    assert "do not divide" in machines_errors("two.yaml", load_config_from_file(good), 7, 2)["processes"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs accelerate launch on CUDA GPUs" in machines_errors(
        "two.yaml", load_config_from_file(good), 8, 2)["accelerate_config"]
