"""The training loops under FSDP 2 on two CPU processes (gloo); run by tests/test_distributed.py as

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.distributed_fsdp_cpu MODEL OUT

with the environment ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` gives its
processes (``launch_environment``). SFT (and its step metrics), the reward model, and RL (stopped after step 3 with the
checkpoint of step 2, then resumed from it to the end) write their whole weights to OUT.

Why the state is set by hand: Accelerate turns only GPU-type processes into FSDP (its state leaves
CPU processes MULTI_CPU, i.e. DDP, whatever the config says), while torch's FSDP 2 itself runs on
CPUs with gloo. So ``fsdp_accelerator`` gives the CPU processes the state ``accelerate launch``
gives GPU processes -- distributed type FSDP, with the plugin read from that environment -- and the
loops then run their FSDP path as they would on GPUs.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
SFT = {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "optimizer": "adamw", "gradient_accumulation_steps": 2}
RM = {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "optimizer": "adamw"}
RL = {"batch_size": 4, "epochs": 2, "max_response_tokens": 4, "learning_rate": 1e-3, "optimizer": "adamw",
      "save_every": 2}
STOP_AFTER = 2  # RL stops after this step, as a killed run would, and resumes from the checkpoint of step 2


def examples():
    prompts = [f"say {i} the quick brown fox" for i in range(8)]
    return prompts, [f" the answer is {i}" + " and more" * (i % 3) for i in range(8)]


def pairs():
    from rl.reward_model import Pair

    prompts, _ = examples()
    return [Pair(p, " yes" * (1 + i % 3), " no", 1.0 if i % 3 else 0.0) for i, p in enumerate(prompts)]


def launch_environment(processes=2):
    """The variables ``accelerate launch`` sets for its processes from configs/accelerate/fsdp.yaml."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIG), "--num_processes", str(processes),
                                               "unused.py"])
    args, _, _ = _validate_launch_command(args)
    return {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def fsdp_accelerator():
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables
    return accelerator


class _Stop(Exception):
    pass


def main(model_dir, out):
    import torch
    import transformers

    from rl.distributed import engine, save_trained
    from rl.modeling import load_causal_lm, load_tokenizer, seed_everything
    from rl.reinforce import ReinforceTrainer, RLConfig
    from rl.reward_model import RewardModelConfig, RewardScorer, train_reward_model
    from rl.sft import SFTConfig, train_sft

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    out = Path(out)
    accelerator = fsdp_accelerator()
    assert engine(accelerator) == "FSDP" and accelerator.num_processes == 2

    prompts, responses = examples()
    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir, "cpu")
    metrics = []
    train_sft(model, tokenizer, prompts, responses, SFTConfig(**SFT), accelerator=accelerator,
              on_step=lambda step, total, m: metrics.append(m))
    assert type(next(model.parameters())).__name__ == "DTensor"  # really sharded
    save_trained(model, tokenizer, out / "sft", accelerator)
    if accelerator.is_main_process:
        (out / "sft_metrics.json").write_text(json.dumps(metrics))

    seed_everything(0)  # the fresh head, drawn as one process draws it
    scorer = RewardScorer.from_folder(model_dir, "cpu")
    train_reward_model(scorer, pairs(), RewardModelConfig(**RM), accelerator=accelerator)
    save_trained(scorer.model, scorer.tokenizer, out / "rm", accelerator)

    seed_everything(0)
    reward = RewardScorer.from_folder(model_dir, "cpu", max_length=512 + 4)
    config = RLConfig(**RL)
    trainer = ReinforceTrainer.from_sft(model_dir, reward, config, accelerator=accelerator)

    def stop(step, total, metrics, texts):
        if step == STOP_AFTER:
            raise _Stop()

    try:
        trainer.train(prompts, on_step=stop, checkpoint_dir=out / "rl-run")
    except _Stop:
        pass
    resumed = ReinforceTrainer.from_sft(model_dir, reward, config, accelerator=accelerator,
                                        resume_from=out / "rl-run" / "checkpoint")
    assert resumed.completed_steps == STOP_AFTER
    resumed.train(prompts, checkpoint_dir=out / "rl-run")
    save_trained(resumed.policy, tokenizer, out / "rl", accelerator)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
