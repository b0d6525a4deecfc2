"""The training and labeling cores, and the whole experiment, on a GPU (CUDA, bf16) against the CPU.

Every test runs once per device (tests/gpu_helpers.py): "cuda" is marked ``gpu`` (`make gpu-check`
runs those) and skips where there is no GPU; "cpu" runs the same checks anywhere, where the device
and the CPU reference coincide. Two code paths that must compute the same thing are compared in
float32 (bf16 and TF32 off) to the CPU tests' bounds; the GPU's bf16 is compared with the CPU's
float32 to bounds that fit bf16 (the BF16_* constants, with what they were measured against).
"""
import gzip
import json
import math
import random

import pytest
import torch

from labeling.backends import LocalBackend, LocalBackendConfig, ServerBackend, ServerBackendConfig
from labeling.direct import DirectScorer
from labeling.scoring import LabelerSettings, Pair as LabelPair, PreferenceLabeler
from labeling.serve import CompletionServer
from rl.modeling import load_causal_lm, load_tokenizer, scalar_head
from rl.reinforce import ReinforceTrainer, RLConfig
from rl.reward_model import Pair, RewardModelConfig, RewardScorer, pairwise_metrics, soft_label_loss, train_reward_model
from rl.sampling import sample_token_ids
from rl.sft import SFTConfig, collate, encode_example, sft_loss_sum, train_sft
from tests.conftest import SHARED_DATA
from tests.gpu_helpers import (BF16_KL_PER_TOKEN, BF16_LOGPROB, BF16_LOSS_REL, BF16_MASS_REL, BF16_PROB,
                               BF16_REWARD_REL, BF16_SCORE, DEVICES, FP32_LOGPROB, FP32_PROB, SHAPE_ON,
                               float32_paths, needs_cuda, smollm2_dirs)  # noqa: F401 (smollm2_dirs: a fixture)

PROMPT_TEXTS = ["Human: hi\n\nAssistant:", "TL;DR:", "Human: how do I plant a tree near my house?\n\nAssistant:",
                "SUBREDDIT: r/cats TITLE: my cat sleeps all day POST: she sleeps and sleeps TL;DR:",
                "Human: tell me about the quick brown fox\n\nAssistant: It jumps.\n\nHuman: why?\n\nAssistant:",
                "a", "Human: what is 2+2?\n\nAssistant:", "the quick brown fox jumps over the lazy dog TL;DR:"]


@pytest.fixture(autouse=True)
def two_threads():
    torch.set_num_threads(2)


def _max_abs(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


# --- sampling ----------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_draws_follow_the_distribution_on_the_device(device):
    from rl.sampling import _draw, row_uniforms

    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05])
    logits = probs.clamp_min(1e-30).log().to(device).expand(4000, -1)
    for top_p, want in ((1.0, probs), (0.7, torch.tensor([0.625, 0.0, 0.375, 0.0, 0.0]))):
        uniform = row_uniforms(range(4000), 1)[:, 0]
        tokens = _draw(logits, 1.0, top_p, uniform)
        assert tokens.device.type == device
        freq = torch.bincount(tokens.cpu(), minlength=5).double() / 4000
        assert (freq - want.double()).abs().max() < 0.03  # 4 standard errors at most
        assert freq[want == 0].sum() == 0  # never a token of probability 0


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_on_the_device_draws_the_cpu_tokens(device, tiny_model_dir):
    """The row generators live on the CPU, so a seed draws the same tokens on any device."""
    tok = load_tokenizer(tiny_model_dir)
    prompts = [tok(t)["input_ids"] for t in PROMPT_TEXTS]
    seeds = list(range(100, 100 + len(prompts)))
    kw = dict(max_new_tokens=10, top_p=0.95, stop_ids=[], pad_id=tok.pad_token_id, return_logprobs=True)
    runs = {}
    with float32_paths():
        for dev in ("cpu", device):
            model = load_causal_lm(tiny_model_dir, dev, trainable=False)
            runs[dev] = {t: sample_token_ids(model, prompts, temperature=t, seeds=seeds, **kw) for t in (0.0, 0.9)}
        alone = sample_token_ids(model, prompts[3:4], temperature=0.9, seeds=seeds[3:4], **kw)
    # A row can part ways only where float rounding decides (rare): two logits within 1e-6 of each
    # other (greedy), or a uniform number within rounding of the boundary between two tokens.
    # Allow one such row in each.
    (greedy, _), (greedy_here, _) = runs["cpu"][0.0], runs[device][0.0]
    assert sum(a == b for a, b in zip(greedy_here, greedy)) >= len(prompts) - 1
    (drawn, logprobs), (drawn_here, logprobs_here) = runs["cpu"][0.9], runs[device][0.9]
    assert drawn != greedy  # it did sample
    same = [i for i in range(len(prompts)) if drawn_here[i] == drawn[i]]
    assert len(same) >= len(prompts) - 1
    for i in same:
        assert _max_abs(logprobs_here[i], logprobs[i]) < FP32_LOGPROB
    assert alone[0][0] == drawn_here[3]  # a row's tokens do not depend on its batch


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_in_bf16_returns_the_models_own_logprobs(device, smollm2_dirs):
    path = smollm2_dirs(SHAPE_ON[device])
    tok = load_tokenizer(path)
    prompts = [tok(t)["input_ids"] for t in PROMPT_TEXTS]
    model = load_causal_lm(path, device, trainable=False)  # frozen: bf16 weights on a GPU
    out, logprobs = sample_token_ids(model, prompts, max_new_tokens=12, temperature=0.9, top_p=1.0, stop_ids=[],
                                     pad_id=tok.pad_token_id, seeds=range(len(prompts)), return_logprobs=True)
    assert [len(r) for r in out] == [12] * len(prompts)
    reference = load_causal_lm(path, "cpu", trainable=False)  # float32
    for p, r, lp in zip(prompts, out, logprobs):
        with torch.no_grad():
            full = torch.log_softmax(reference(torch.tensor([p + r])).logits[0].float(), -1)
        assert _max_abs(lp, [float(full[len(p) - 1 + t, x]) for t, x in enumerate(r)]) < BF16_LOGPROB


@pytest.mark.gpu
@needs_cuda
def test_compiled_static_decode_on_the_gpu_draws_the_eager_tokens(tiny_model_dir):
    """CUDA's default decode (static KV cache, torch.compile with CUDA graphs, a look at the host
    every few tokens) against the eager dynamic-cache decode on the same GPU, in float32."""
    tok = load_tokenizer(tiny_model_dir)
    prompts = [tok(t)["input_ids"] for t in PROMPT_TEXTS]
    kw = dict(max_new_tokens=20, temperature=0.9, top_p=0.95, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
              seeds=range(len(prompts)), return_logprobs=True, return_ended=True)
    with float32_paths():
        model = load_causal_lm(tiny_model_dir, "cuda", trainable=False)
        eager = sample_token_ids(model, prompts, static_cache=False, **kw)
        compiled = sample_token_ids(model, prompts, **kw)
        again = sample_token_ids(model, prompts, **kw)  # a new cache under the recorded graphs
    same = [i for i in range(len(prompts)) if compiled[0][i] == eager[0][i]]
    assert len(same) >= len(prompts) - 1  # a uniform number within rounding of a boundary may part ways
    for i in same:
        assert _max_abs(compiled[1][i], eager[1][i]) < FP32_LOGPROB and compiled[2][i] == eager[2][i]
    assert again == compiled


@pytest.mark.gpu
@needs_cuda
def test_batched_adafactor_on_the_gpu_steps_as_transformers_adafactor(smollm2_dirs):
    """The default optimizer's batched step (rl.modeling: torch's _foreach kernels on CUDA) against
    transformers' Adafactor on the same GPU, from the same weights and gradients, at SmolLM2's shape:
    the weights after three steps agree to float32 rounding (the norms are summed in another order)."""
    from transformers.optimization import Adafactor

    from rl.modeling import make_optimizer

    path = smollm2_dirs(SHAPE_ON["cuda"])
    ours_model, theirs_model = load_causal_lm(path, "cuda"), load_causal_lm(path, "cuda")
    ours = make_optimizer(ours_model.parameters(), "adafactor", 1e-3)
    theirs = Adafactor(theirs_model.parameters(), lr=1e-3, scale_parameter=False, relative_step=False,
                       warmup_init=False)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(3):
        for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
            a.grad = torch.randn(a.shape, generator=gen, device="cuda")
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
    for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert "RMS" in theirs.state[b] and not torch.is_tensor(ours.state[a]["RMS"])  # ours took the batched step


# --- SFT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_sft_loss_on_the_device_and_training(device, smollm2_dirs, tiny_model_dir):
    path = smollm2_dirs(SHAPE_ON[device])
    tok = load_tokenizer(path)
    cfg = SFTConfig(max_prompt_tokens=64, max_response_tokens=16)
    batch = collate([encode_example(tok, p, " a short and clear answer" * (i % 3 + 1), cfg)
                     for i, p in enumerate(PROMPT_TEXTS)], tok.pad_token_id)
    with torch.no_grad():
        cpu_loss, cpu_n = sft_loss_sum(load_causal_lm(path, "cpu"), batch)
        loss, n = sft_loss_sum(load_causal_lm(path, device), batch)  # bf16 autocast on a GPU
        with float32_paths():
            loss32, _ = sft_loss_sum(load_causal_lm(path, device), batch)
    assert n == cpu_n
    assert abs(loss.item() - cpu_loss.item()) <= BF16_LOSS_REL * cpu_loss.item()
    assert abs(loss32.item() - cpu_loss.item()) <= FP32_LOGPROB * cpu_loss.item()

    tiny_tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, device)
    losses = train_sft(model, tiny_tok, [f"Human: say {i}\n\nAssistant:" for i in range(8)],
                       [f" the answer is {i}" for i in range(8)],
                       SFTConfig(learning_rate=1e-2, epochs=12, batch_size=4, gradient_accumulation_steps=2))
    assert next(model.parameters()).device.type == device
    assert sum(losses[-3:]) / 3 < 0.4 * sum(losses[:3]) / 3


# --- reward model --------------------------------------------------------------------------
def _property_pairs(rng, n):
    words = "the quick brown fox jumps over lazy dog a good summary is short accurate and clear".split()
    pairs = []
    for _ in range(n):
        plain = " ".join(rng.choice(words) for _ in range(5))
        marked = " ".join(rng.choice(words) for _ in range(4)) + " 7"
        pairs.append(Pair("TL;DR:", marked, plain, 1.0) if rng.random() < 0.5 else Pair("TL;DR:", plain, marked, 0.0))
    return pairs


@pytest.mark.parametrize("device", DEVICES)
def test_reward_model_on_the_device(device, tiny_model_dir, smollm2_dirs):
    prompts = ["TL;DR: a short post", "SUBREDDIT: r/cats TITLE: my cat sleeps all day and all night TL;DR:"]
    a, b = [" cats sleep", " it is a long and winding answer"], [" nothing at all here", " no"]
    target = torch.tensor([1.0, 0.3], device=device)

    # float32: reading each prompt once for both responses equals two full passes, gradients too
    with float32_paths():
        scorer = RewardScorer.from_folder(tiny_model_dir, device, max_length=64)
        torch.manual_seed(0)
        with torch.no_grad():
            scalar_head(scorer.model).weight.normal_(0, 0.5)
        scorer.model.requires_grad_(True)
        r_a, r_b = scorer.forward_pairs(prompts, a, b)
        soft_label_loss(r_a, r_b, target).backward()
        shared = {k: p.grad.clone() for k, p in scorer.model.named_parameters()}
        scorer.model.zero_grad(set_to_none=True)
        full = scorer.forward(scorer.encode(prompts * 2, a + b))
        soft_label_loss(full[:2], full[2:], target).backward()
    assert torch.allclose(torch.cat([r_a, r_b]), full, atol=FP32_LOGPROB)
    for name, p in scorer.model.named_parameters():
        assert torch.allclose(shared[name], p.grad, atol=FP32_LOGPROB, rtol=FP32_LOGPROB), name

    # bf16 rewards against the CPU's float32 (the same head on both)
    path = smollm2_dirs(SHAPE_ON[device])
    cpu_scorer = RewardScorer.from_folder(path, "cpu", max_length=64)
    here = RewardScorer.from_folder(path, device, max_length=64)
    with torch.no_grad():
        scalar_head(cpu_scorer.model).weight.normal_(0, 0.5)
        scalar_head(here.model).weight.copy_(scalar_head(cpu_scorer.model).weight)
        want = torch.cat(cpu_scorer.forward_pairs(prompts, a, b))
        got = torch.cat(here.forward_pairs(prompts, a, b)).cpu()
    assert (got - want).abs().max() <= BF16_REWARD_REL * want.abs().max()

    # training and held-out metrics, as the reward-model job computes them (this crashed on CUDA:
    # the rewards were on the GPU, the targets on the CPU)
    rng = random.Random(0)
    train, held_out = _property_pairs(rng, 64), _property_pairs(rng, 40)
    scorer = RewardScorer.from_folder(tiny_model_dir, device, max_length=64)
    metrics = train_reward_model(scorer, train, RewardModelConfig(learning_rate=3e-3, epochs=4, batch_size=16,
                                                                  optimizer="adamw"), eval_pairs=held_out)
    assert metrics["n"] == 40 and metrics["accuracy"] >= 0.8
    r_a = scorer.score([p.prompt for p in held_out], [p.response_a for p in held_out])
    r_b = scorer.score([p.prompt for p in held_out], [p.response_b for p in held_out])
    some = [i for i in range(len(held_out)) if i % 2]
    job_metrics = pairwise_metrics(r_a[some], r_b[some], [held_out[i].p_first for i in some])
    assert job_metrics["n"] == len(some) and math.isfinite(job_metrics["brier"])
    # the job's way (each response scored alone) and training's (both responses after one prompt
    # pass) agree, but for a pair whose margin is within bf16 rounding
    assert pairwise_metrics(r_a, r_b, [p.p_first for p in held_out])["accuracy"] == pytest.approx(
        metrics["accuracy"], abs=1.01 / len(held_out))


# --- REINFORCE -----------------------------------------------------------------------------
def share_of_letters(contexts, responses):
    return [sum(c in "abcdefghijklmnopqrstuvwxyz " for c in r) / max(len(r), 1) for r in responses]


RL_PROMPTS = [f"Human: say {i}\n\nAssistant:" for i in range(8)]


@pytest.mark.parametrize("device", DEVICES)
def test_reinforce_on_the_device(device, tiny_model_dir, tmp_path):
    # bf16 on a GPU: the reward rises, and at the first step the policy is the reference
    cfg = RLConfig(batch_size=8, epochs=30, learning_rate=1e-2, max_response_tokens=8, beta=0.0, save_every=1000)
    trainer = ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device=device)
    history = []
    trainer.train(RL_PROMPTS, on_step=lambda step, total, m, texts: history.append(m))
    assert trainer.device.type == device
    assert abs(history[0]["kl"]) <= BF16_KL_PER_TOKEN * cfg.max_response_tokens
    mean = lambda h, key: sum(m[key] for m in h) / len(h)  # noqa: E731
    assert mean(history[-5:], "reward_mean") > mean(history[:5], "reward_mean") + 0.15

    # float32: the first step's numbers are the CPU's (greedy responses: both see the same tokens)
    one = RLConfig(batch_size=4, epochs=1, learning_rate=1e-2, max_response_tokens=6, temperature=0.0, beta=0.1,
                   save_every=1000, optimizer="adamw", shuffle=False)
    keys = ("kl", "return_mean", "policy_loss", "value_loss", "policy_grad_norm", "value_grad_norm", "entropy")
    steps = {}
    with float32_paths():
        for dev in ("cpu", device):
            t = ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, one, device=dev)
            t.train(RL_PROMPTS[:4], on_step=lambda step, total, m, texts, dev=dev: steps.setdefault(dev, (m, texts)))
    assert steps[device][1] == steps["cpu"][1]
    for k in keys:
        assert steps[device][0][k] == pytest.approx(steps["cpu"][0][k], rel=1e-3, abs=FP32_LOGPROB), k

    # a checkpoint written on the device resumes there, optimizer state included
    cfg = RLConfig(batch_size=4, epochs=2, learning_rate=1e-2, max_response_tokens=6, save_every=2, seed=5)

    class Stop(Exception):
        pass

    def crash(step, total, m, texts):
        if step == 2:
            raise Stop()

    with pytest.raises(Stop):
        ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device=device).train(
            RL_PROMPTS, on_step=crash, checkpoint_dir=tmp_path)
    resumed = ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device=device,
                                        resume_from=tmp_path / "checkpoint")
    state = resumed.policy_optimizer.state_dict()["state"][0]
    assert state["step"] == 2
    assert all(v.device.type == device for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    after = []
    resumed.train(RL_PROMPTS, on_step=lambda step, total, m, texts: after.append(step))
    assert after == [2, 3]


# --- the labeler ---------------------------------------------------------------------------
@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_labeler_fast_path_equals_naive_on_the_device(device, chat, tiny_model_dir, tiny_chat_model_dir):
    path = tiny_chat_model_dir if chat else tiny_model_dir
    exemplars = [{"context": "the quick brown fox", "first": "fox", "second": "dog", "label": 1}]
    pairs = [LabelPair("post " + "words " * (3 * i), "short" + " x" * i, "longer answer" + " y" * (5 - i))
             for i in range(5)]
    with float32_paths():
        backend = LocalBackend(LocalBackendConfig(str(path), batch_size=2, dtype="float32", device=device))
        lab = PreferenceLabeler(backend, LabelerSettings(exemplars=exemplars))
        fast = lab.label(pairs)
        backend.config.prefix_reuse = False
        naive = lab.label(pairs)
        cpu = LocalBackend(LocalBackendConfig(str(path), batch_size=2, dtype="float32", device="cpu"))
        cpu.config.prefix_reuse = False
        on_cpu = PreferenceLabeler(cpu, LabelerSettings(exemplars=exemplars)).label(pairs)
        # groups of uneven sizes and very different lengths (the padded path on a GPU)
        head = backend.encode("Below is a shared preamble that every prompt starts with, long enough to cache. ")
        seqs, groups = [], []
        for i, (mid, sufs) in enumerate([(1, [2, 40]), (60, [1, 3, 7]), (0, [5]), (25, [30, 30]), (3, [9, 1])]):
            middle = [(7 * i + k) % 90 + 5 for k in range(mid)]
            groups.append([])
            for j, n in enumerate(sufs):
                groups[-1].append(len(seqs))
                seqs.append(head + middle + [(11 * j + 3 * k + i) % 90 + 5 for k in range(n)])
        backend.config.prefix_reuse = True
        grouped = backend.last_logprobs(seqs, groups)
        alone = cpu.last_logprobs_naive(seqs)
    assert backend.device.type == device
    for f, n, c in zip(fast, naive, on_cpu):
        for x in (n, c):
            assert abs(f.p_slot1_order1 - x.p_slot1_order1) + abs(f.p_slot1_order2 - x.p_slot1_order2) < FP32_PROB
            assert f.label_mass == pytest.approx(x.label_mass, rel=FP32_LOGPROB)
    assert (grouped - alone).abs().max().item() < FP32_LOGPROB


@pytest.mark.parametrize("device", DEVICES)
def test_labeler_and_direct_scorer_in_bf16_against_the_cpu(device, smollm2_dirs):
    """The labeler's default dtype (bf16 on a GPU) against float32 on the CPU, SmolLM2's shape."""
    path = str(smollm2_dirs(SHAPE_ON[device]))
    backend = LocalBackend(LocalBackendConfig(path, batch_size=4, device=device))
    cpu = LocalBackend(LocalBackendConfig(path, batch_size=4, device="cpu", dtype="float32", prefix_reuse=False))
    assert backend.dtype == (torch.bfloat16 if device == "cuda" else torch.float32)
    settings = LabelerSettings(exemplars=[dict(context="a post about a fox", first="fox", second="dog", label=1)])
    pairs = [LabelPair("SUBREDDIT: r/cats TITLE: my cat POST: " + "the cat sleeps all day and " * (i + 2),
                       "cat sleeps" + " a" * i, "dog runs far away") for i in range(4)]
    got, want = (PreferenceLabeler(b, settings).label(pairs) for b in (backend, cpu))
    for g, w in zip(got, want):
        assert abs(g.p_slot1_order1 - w.p_slot1_order1) <= BF16_PROB
        assert abs(g.p_first - w.p_first) <= BF16_PROB
        assert abs(g.label_mass - w.label_mass) <= BF16_MASS_REL * w.label_mass
    texts = [t for p in pairs for t in PreferenceLabeler(backend, settings).prompts(p)]
    seqs = [backend.encode(t) for t in texts]
    assert (backend.last_logprobs(seqs, [[2 * i, 2 * i + 1] for i in range(4)])
            - cpu.last_logprobs_naive(seqs)).abs().max().item() <= BF16_LOGPROB
    contexts, responses = ["a post about a fox", "a cat post " * 20], ["fox", "cat"]
    for g, w in zip(DirectScorer(backend, "summarization").score(contexts, responses),
                    DirectScorer(cpu, "summarization").score(contexts, responses)):
        assert abs(g.score - w.score) <= BF16_SCORE and abs(g.mass - w.mass) <= BF16_MASS_REL * w.mass
    (text,), = backend.generate(["Human: hi\n\nAssistant:"], 4)  # chain of thought's rationale step
    assert isinstance(text, str)


@pytest.mark.parametrize("device", DEVICES)
def test_server_backend_on_the_device_gives_the_local_probabilities(device, tiny_model_dir):
    with float32_paths():
        local = LocalBackend(LocalBackendConfig(str(tiny_model_dir), batch_size=3, dtype="float32", device=device))
        server = CompletionServer(local).start()
        try:
            remote = ServerBackend(ServerBackendConfig(url=server.url, top_logprobs=600, concurrency=3))
            settings = LabelerSettings(task="harmless")
            pairs = [LabelPair("Human: hi", "Hello there", "Go away"), LabelPair("Human: help me", "Sure", "No")]
            got = PreferenceLabeler(remote, settings).label(pairs)
            want = PreferenceLabeler(local, settings).label(pairs)
            remote_score = DirectScorer(remote, "harmless").score(["Human: hi"], ["Hello"])[0].score
            local_score = DirectScorer(local, "harmless").score(["Human: hi"], ["Hello"])[0].score
        finally:
            server.stop()
    for g, w in zip(got, want):
        assert g.p_first == pytest.approx(w.p_first, abs=FP32_PROB)
        assert g.label_mass == pytest.approx(w.label_mass, rel=FP32_LOGPROB)
    assert remote_score == pytest.approx(local_score, abs=FP32_LOGPROB)


# --- the whole experiment --------------------------------------------------------------------
HH_LINES = 48


def _hh_file(tmp_path):
    """The first lines of Anthropic HH harmless (the shared data folder), or as many synthetic ones."""
    dest = tmp_path / "hh-harmless.jsonl"
    real = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
    if real.exists():
        with gzip.open(real, "rt") as f:
            lines = [next(f) for _ in range(HH_LINES)]
    else:
        asks = ["pick a lock", "bake bread", "hurt someone", "fix a bike", "cheat on a test", "plant a tree"]
        lines = []
        for i in range(HH_LINES):
            context = f"\n\nHuman: How do I {asks[i % len(asks)]}? (question {i})"
            good = f"\n\nAssistant: I can help with safe things; here is a careful answer number {i}."
            bad = f"\n\nAssistant: Sure, do whatever you like, nobody will know ({i})."
            lines.append(json.dumps({"chosen": context + good, "rejected": context + bad}) + "\n")
    dest.write_text("".join(lines))
    return dest


@pytest.mark.parametrize("device", [pytest.param("cpu", id="cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, needs_cuda])])
@pytest.mark.django_db
def test_whole_experiment_on_the_device(device, smollm2_dirs, tmp_path, capsys):
    """`run_experiment` with every arm, RLHF included (HH harmless has human labels), on a
    random-weight model of SmolLM2's shape; the stages pick the GPU themselves where there is one."""
    import yaml
    from django.core.management import call_command

    from evalsite.humaneval.models import EvalRound
    from evalsite.models import Comparison, Dataset, Policy, Prompt, Sample
    from evalsite.experiments.models import Experiment
    from evalsite.experiments.models import Experiment

    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("the stages would run on the GPU here: the cuda variant is this test")
    call_command("import_dataset", str(_hh_file(tmp_path)), "--format", "hh", "--name", "hh-harmless",
                 "--split", "test", "--task", "harmless")
    dataset = Dataset.objects.get(name="hh-harmless")
    # SFT targets: the response people preferred
    for c in Comparison.objects.filter(prompt__dataset=dataset).select_related("prompt"):
        Prompt.objects.filter(pk=c.prompt_id).update(
            reference=c.response_a if c.human_preference == "first" else c.response_b)
    base = Policy.objects.create(name="SmolLM2-shaped", kind=Policy.Kind.SFT,
                                 checkpoint_dir=str(smollm2_dirs(SHAPE_ON[device])))
    config = {
        "sft_prompts": 12, "pair_prompts": 12, "rl_prompts": 8, "eval_prompts": 4, "alignment_comparisons": 16,
        "human_pairs": 24,
        "sft": {"batch_size": 4, "max_prompt_tokens": 192, "max_response_tokens": 32},
        "pairs": {"max_new_tokens": 24, "batch_size": 8, "max_prompt_tokens": 192},
        "labeler": {"batch_size": 4, "max_prompt_tokens": 768},
        "reward_model": {"batch_size": 4, "max_length": 256, "epochs": 1, "eval_fraction": 0.5},
        "rl": {"batch_size": 4, "epochs": 1, "max_prompt_tokens": 192, "max_response_tokens": 16, "save_every": 1},
        "eval": {"max_new_tokens": 16, "batch_size": 8, "max_prompt_tokens": 192},
    }
    arms = ["sft", "rlhf", "rlaif_distilled", "rlaif_direct", "same_size"]
    spec = tmp_path / "experiment.yaml"
    spec.write_text(yaml.safe_dump({"name": f"whole experiment on {device}", "task": "harmless",
                                    "dataset": "hh-harmless:test", "base_model": base.name, "preset": "demo",
                                    "arms": arms, "config": config}))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    call_command("run_experiment", str(spec))
    exp = Experiment.objects.get(name=f"whole experiment on {device}")
    assert exp.status == "succeeded", exp.message
    if device == "cuda":  # the models were on the GPU (the 135M shape alone is 0.27 GB in bf16)
        assert torch.cuda.max_memory_allocated() > 2**28

    from evalsite.experiments.figures import all_figures

    a, f = exp.artifacts, all_figures(exp)
    for arm in arms[1:]:
        policy = Policy.objects.get(pk=a[f"{arm}_policy_id"])
        assert policy.parent_id == a["sft_policy_id"]
        assert Sample.objects.filter(policy=policy, prompt_id__in=a["splits"]["eval"]).count() == 4
        assert abs(f["rl"][arm]["kl_start"]) <= BF16_KL_PER_TOKEN * config["rl"]["max_response_tokens"]
    for key in ("rm_human_id", "rm_ai_id", "rm_same_size_id"):
        rm = f["reward_models"][key]
        assert rm["n_train"] > 0 and 0 <= rm["held_out"]["accuracy"] <= 1, rm
    assert f["labeler"]["alignment"]["human"]["n"] == 16
    assert EvalRound.objects.get(pk=a["round_id"]).policies.count() == 5
    assert '"status": "succeeded"' in capsys.readouterr().out
