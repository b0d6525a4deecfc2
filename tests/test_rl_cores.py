"""The training cores on the tiny random model: SFT, sampling, reward models, REINFORCE."""
import math
import random

import pytest
import torch

from rl.modeling import load_causal_lm, load_tokenizer, make_optimizer, save_hf_folder, scalar_head
from rl.reinforce import ReinforceTrainer, RLConfig, reinforce_losses
from rl.reward_model import (
    Pair,
    RewardModelConfig,
    RewardScorer,
    pairwise_metrics,
    soft_label_loss,
    train_reward_model,
)
from rl.sampling import SamplingConfig, generate, sample_token_ids
from rl.sft import IGNORE, SFTConfig, collate, encode_example, sft_loss_sum, train_sft
from tests.gpu_helpers import smollm2_dirs  # noqa: F401 (a fixture: random-weight SmolLM2 folders)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# --- SFT ---------------------------------------------------------------------------------
def test_sft_labels_cover_response_tokens_only(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    cfg = SFTConfig(max_prompt_tokens=50, max_response_tokens=20)
    short = encode_example(tok, "TL;DR:", "clear", cfg)
    long = encode_example(tok, "Human: the quick brown fox\n\nAssistant:", "Here is how", cfg)
    batch = collate([short, long], tok.pad_token_id)
    for row, (p, r) in enumerate([short, long]):
        assert r[-1] == tok.eos_token_id
        labels = batch["labels"][row].tolist()
        assert labels == [IGNORE] * len(p) + r + [IGNORE] * (batch["labels"].shape[1] - len(p) - len(r))

    # The loss is the cross-entropy of exactly those response tokens.
    model = load_causal_lm(tiny_model_dir, "cpu")
    loss_sum, n = sft_loss_sum(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = 0.0
    for row, (p, r) in enumerate([short, long]):
        logp = torch.log_softmax(logits[row], -1)
        expected -= sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(r))
    assert n == len(short[1]) + len(long[1])
    assert float(loss_sum.detach()) == pytest.approx(expected, rel=1e-5)


def test_sft_loss_falls_on_a_toy_set(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "cpu")
    prompts = [f"Human: say {i}\n\nAssistant:" for i in range(8)]
    refs = [f" the answer is {i}" for i in range(8)]
    losses = train_sft(model, tok, prompts, refs, SFTConfig(learning_rate=1e-2, epochs=12, batch_size=4,
                                                            gradient_accumulation_steps=2))
    assert len(losses) == 24
    assert sum(losses[-3:]) / 3 < 0.4 * sum(losses[:3]) / 3


# --- sampling ----------------------------------------------------------------------------
def test_kv_cached_greedy_sampling_matches_full_recompute(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "cpu", trainable=False)
    prompts = [tok("Human: hi\n\nAssistant:")["input_ids"], tok("TL;DR:")["input_ids"]]
    ours = sample_token_ids(model, prompts, max_new_tokens=6, temperature=0, top_p=1.0, stop_ids=[],
                            pad_id=tok.pad_token_id, seeds=[0, 1])
    for p, got in zip(prompts, ours):
        seq = list(p)
        for _ in range(6):  # no cache, no padding: one full forward per token
            with torch.no_grad():
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        assert got == seq[len(p):]


def test_sampled_logprobs_equal_a_full_forward(tiny_model_dir):
    """RL's KL uses the generation pass's log pi: it must be the model's own (T = 1) log-probs."""
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "cpu", trainable=False)
    prompts = [tok("Human: hi\n\nAssistant:")["input_ids"], tok("TL;DR:")["input_ids"]]
    out, logprobs = sample_token_ids(model, prompts, max_new_tokens=5, temperature=0.9, top_p=1.0, stop_ids=[],
                                     pad_id=tok.pad_token_id, seeds=[3, 4], return_logprobs=True)
    for p, got, lps in zip(prompts, out, logprobs):
        with torch.no_grad():
            full = torch.log_softmax(model(torch.tensor([list(p) + got])).logits[0].float(), -1)
        expected = [float(full[len(p) - 1 + t, tok_id]) for t, tok_id in enumerate(got)]
        assert len(lps) == len(got) == 5
        assert lps == pytest.approx(expected, abs=1e-4)


def test_sampling_n_per_prompt_seeded_per_row(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "cpu", trainable=False)
    cfg = SamplingConfig(n=2, temperature=1.0, max_new_tokens=5, seed=3, batch_size=4)
    prompts = ["Human: hello there\n\nAssistant:", "TL;DR:"]
    both = generate(model, tok, prompts, cfg, prompt_keys=[11, 22])
    alone = generate(model, tok, prompts[1:], cfg, prompt_keys=[22])
    assert [len(g) for g in both] == [2, 2]
    assert all(len(x.token_ids) <= 5 for g in both for x in g)
    # A row's sample depends on its seed and prompt key, not on the other rows in the batch.
    assert [x.token_ids for x in alone[0]] == [x.token_ids for x in both[1]]
    assert both[0][0].token_ids != both[0][1].token_ids
    other_seed = generate(model, tok, prompts[1:], SamplingConfig(**{**cfg.__dict__, "seed": 4}), prompt_keys=[22])
    assert [x.token_ids for x in other_seed[0]] != [x.token_ids for x in alone[0]]


def test_each_row_draws_its_tokens_from_its_own_seeded_generator(tiny_model_dir):
    """The reproducibility guarantee (rl/sampling.py): token t of a row is drawn with the t-th number of
    a CPU generator seeded with the row's seed, whatever else shares the batch."""
    from rl.sampling import _draw

    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "cpu", trainable=False)
    prompts = [tok(t)["input_ids"] for t in ("Human: hi\n\nAssistant:", "TL;DR:", "the quick brown fox jumps")]
    seeds = [7, 8, 9]
    out = sample_token_ids(model, prompts, max_new_tokens=10, temperature=0.9, top_p=0.95, stop_ids=[],
                           pad_id=tok.pad_token_id, seeds=seeds)
    for p, seed, got in zip(prompts, seeds, out):
        generator, seq = torch.Generator().manual_seed(seed), list(p)
        for _ in range(10):  # alone, no cache: one full forward and one draw of the generator per token
            with torch.no_grad():
                logits = model(torch.tensor([seq])).logits[:, -1]
            seq.append(int(_draw(logits, 0.9, 0.95, torch.rand(1, generator=generator, dtype=torch.float64))))
        assert got == seq[len(p):]
    assert len({tuple(x) for x in out}) == 3


def _sampling_with_stops(model, tok, **kw):
    prompts = [tok(t)["input_ids"] for t in ("Human: hi\n\nAssistant:", "TL;DR:", "the quick brown fox jumps",
                                              "a", "Human: how do I plant a tree near my house?\n\nAssistant:")]
    args = dict(max_new_tokens=20, temperature=0.9, top_p=1.0, pad_id=tok.pad_token_id, seeds=[1, 2, 3, 4, 5],
                return_logprobs=True, return_ended=True, decode=lambda t: tok.decode(t, skip_special_tokens=True))
    free, _, _ = sample_token_ids(model, prompts, stop_ids=[], **args)
    # row 0 stops at its 3rd token, row 1 at a stop string that starts in its 10th token (checked at
    # token 16 on the GPU schedule, at token 8 and 16 on the CPU's)
    stop_ids, stop_string = [free[0][2]], tok.decode(free[1][9:11])
    return free, sample_token_ids(model, prompts, stop_ids=stop_ids, stop_strings=(stop_string,), **args, **kw)


@pytest.mark.parametrize("static_cache,look_every", [(True, 1), (False, 8), (True, 8)])
def test_static_cache_and_host_looks_every_k_tokens_give_the_same_responses(tiny_model_dir, monkeypatch,
                                                                            static_cache, look_every):
    """The GPU's schedule on the CPU: a static KV cache (finished rows stay in the batch, masked) and/or
    a look at the finished rows only every k tokens give what the CPU's default path gives."""
    import rl.sampling

    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "cpu", trainable=False)
    free, (out, logprobs, ended) = _sampling_with_stops(model, tok)
    assert len(out[0]) == 3 and out[0][-1] == free[0][2] and ended[0]  # the stop token is kept
    assert len(out[1]) <= 10 and ended[1] and out[1] == free[1][:len(out[1])]
    assert any(not e for e in ended)
    monkeypatch.setattr(rl.sampling, "CPU_CHECK_EVERY", look_every)
    _, (got, got_logprobs, got_ended) = _sampling_with_stops(model, tok, static_cache=static_cache,
                                                             compile_decode=False)
    assert got == out and got_ended == ended
    for a, b in zip(got_logprobs, logprobs):
        assert a == pytest.approx(b, abs=1e-5)


def test_compiled_static_decode_step_traces_as_one_graph(tiny_model_dir, monkeypatch):
    """The CUDA default (static cache + torch.compile of the decode step), traced on the CPU with
    dynamo's eager backend: no graph break, and the same responses as the eager path."""
    import rl.sampling
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "cpu", trainable=False)
    _, eager = _sampling_with_stops(model, tok)
    monkeypatch.setattr(rl.sampling, "COMPILE_CONFIG", CompileConfig(backend="eager", fullgraph=True, mode=None))
    torch._dynamo.reset()
    counters.clear()
    try:
        _, compiled = _sampling_with_stops(model, tok, static_cache=True, compile_decode=True)
        assert counters["stats"]["unique_graphs"] == 1  # one graph for all the decode steps
    finally:
        torch._dynamo.reset()
    assert compiled[0] == eager[0] and compiled[2] == eager[2]


# --- reward model ------------------------------------------------------------------------
def test_soft_label_loss_minimum_matches_the_label_distribution():
    # For p = 0.8 the loss -0.8 log s(m) - 0.2 log s(-m) is minimal at sigmoid(m) = 0.8, i.e.
    # m = log 4 = 1.3863, where it equals H(0.8) = 0.5004; at m = 0 it is log 2 = 0.6931.
    p = torch.tensor([0.8])
    assert float(soft_label_loss(torch.tensor([0.0]), torch.tensor([0.0]), p)) == pytest.approx(math.log(2), abs=1e-6)
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert float(soft_label_loss(torch.tensor([math.log(4)]), torch.tensor([0.0]), p)) == pytest.approx(h, abs=1e-6)
    margin = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([margin], lr=1.0)
    for _ in range(300):
        opt.zero_grad()
        soft_label_loss(margin, torch.zeros(1), p).backward()
        opt.step()
    assert margin.item() == pytest.approx(math.log(4), abs=1e-3)
    # A tie (0.5, 0.5) pulls the two rewards together; a hard label pushes them apart forever.
    tie = torch.tensor([0.5])
    m = torch.tensor([2.0], requires_grad=True)
    soft_label_loss(m, torch.zeros(1), tie).backward()
    assert float(m.grad) == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item() - 0.5, abs=1e-6)


def test_pairwise_metrics_by_hand():
    m = pairwise_metrics(r_a=[2.0, 0.0, -1.0, 0.0], r_b=[0.0, 0.0, 0.0, 0.0], p_first=[1.0, 0.5, 1.0, 0.0])
    assert m["n"] == 3 and m["ties_excluded"] == 1
    # pair 1 right, pair 3 wrong, pair 4 predicted as a tie: half credit
    assert m["accuracy"] == pytest.approx(1.5 / 3)
    s2 = 1 / (1 + math.exp(-2))
    s_1 = 1 / (1 + math.exp(1))
    assert m["brier"] == pytest.approx(((s2 - 1) ** 2 + 0 + (s_1 - 1) ** 2 + 0.25) / 4)


def _property_pairs(rng, n):
    words = "the quick brown fox jumps over lazy dog a good summary is short accurate and clear".split()
    pairs = []
    for _ in range(n):
        plain = " ".join(rng.choice(words) for _ in range(5))
        with_property = " ".join(rng.choice(words) for _ in range(4)) + " 7"
        if rng.random() < 0.5:
            pairs.append(Pair("TL;DR:", with_property, plain, 1.0))
        else:
            pairs.append(Pair("TL;DR:", plain, with_property, 0.0))
    return pairs


def test_reward_model_learns_a_visible_property(tiny_model_dir, tmp_path):
    rng = random.Random(0)
    train, held_out = _property_pairs(rng, 64), _property_pairs(rng, 40)
    torch.manual_seed(0)  # the fresh head's random weights: the same whichever tests ran before
    scorer = RewardScorer.from_folder(tiny_model_dir, "cpu", max_length=64)
    before = pairwise_metrics(*[scorer.score([p.prompt for p in held_out], [getattr(p, f) for p in held_out])
                                for f in ("response_a", "response_b")], [p.p_first for p in held_out])
    metrics = train_reward_model(scorer, train, RewardModelConfig(learning_rate=3e-3, epochs=4, batch_size=16,
                                                                  optimizer="adamw"), eval_pairs=held_out)
    assert metrics["n"] == 40
    assert metrics["accuracy"] >= 0.85 > before["accuracy"] + 0.1
    assert metrics["brier"] < before["brier"]
    # Saved and reloaded as a plain HF folder, it gives the same rewards.
    save_hf_folder(scorer.model, scorer.tokenizer, tmp_path / "rm")
    assert any((tmp_path / "rm").glob("*.safetensors"))
    again = RewardScorer.from_folder(tmp_path / "rm", "cpu", max_length=64)
    texts = [p.response_a for p in held_out[:5]]
    assert torch.allclose(again.score(["TL;DR:"] * 5, texts), scorer.score(["TL;DR:"] * 5, texts), atol=1e-5)


@pytest.fixture
def tiny_llama_dir(smollm2_dirs):
    """SmolLM2's architecture (Llama: rotary positions, grouped-query attention) at a tiny size."""
    return smollm2_dirs("tiny")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_pair_pass_equals_two_full_passes(arch, attention, tiny_model_dir, tiny_llama_dir):
    """Training reads each pair as one packed row [prompt | a | b]; rewards, loss and gradients must
    be those of scoring prompt+a and prompt+b as two ordinary rows: for absolute (GPT-2) and rotary
    (Llama) positions, both attention implementations that take the packed mask, prompts and answers
    of different lengths (padding inside the batch)."""
    scorer = RewardScorer.from_folder(tiny_model_dir if arch == "gpt2" else tiny_llama_dir, "cpu", max_length=64)
    scorer.model.set_attn_implementation(attention)
    torch.manual_seed(0)
    with torch.no_grad():
        scalar_head(scorer.model).weight.normal_(0, 0.5)  # a fresh head is zero: make rewards differ
    scorer.model.requires_grad_(True)
    prompts = ["TL;DR: a short post", "SUBREDDIT: r/cats TITLE: my cat sleeps all day and all night TL;DR:",
               "Human: hi\n\nAssistant:"]
    a = [" cats sleep", " it is a long and winding answer", " hello there, how can I help you today?"]
    b = [" nothing at all here", " no", " hi"]
    target = torch.tensor([1.0, 0.3, 0.0])
    calls = []
    scorer.net.register_forward_pre_hook(lambda module, args, kwargs: calls.append(sorted(kwargs)), with_kwargs=True)

    r_a, r_b = scorer.forward_pairs(prompts, a, b)
    soft_label_loss(r_a, r_b, target).backward()
    packed = {k: p.grad.clone() for k, p in scorer.model.named_parameters()}
    scorer.model.zero_grad(set_to_none=True)
    full = scorer.forward(scorer.encode(prompts * 2, a + b))
    soft_label_loss(full[:3], full[3:], target).backward()

    assert "segments" in calls[0] and "segments" not in calls[1]  # one packed pass, then two whole rows
    assert torch.allclose(torch.cat([r_a, r_b]), full, atol=1e-5)
    assert r_a[0].item() != pytest.approx(r_b[0].item(), abs=1e-3)  # the comparison means something
    for name, p in scorer.model.named_parameters():
        assert torch.allclose(packed[name], p.grad, atol=1e-5, rtol=1e-4), name
    assert any(float(p.grad.abs().max()) > 0 for p in scorer.model.parameters())


def test_pairs_are_packed_only_where_the_attention_takes_the_mask(tiny_llama_dir):
    import copy

    from transformers import AutoConfig

    from rl.reward_model import packs_pairs

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    for implementation, packs in (("sdpa", True), ("eager", True), ("flash_attention_2", False)):
        other = copy.deepcopy(config)
        other._attn_implementation = implementation
        assert packs_pairs(other) is packs, implementation
    config._attn_implementation = "sdpa"
    windowed = copy.deepcopy(config)
    windowed.sliding_window = 8  # the packed mask would replace the window's
    assert not packs_pairs(windowed)
    windowed.layer_types = ["full_attention"] * config.num_hidden_layers  # a window that no layer uses
    assert packs_pairs(windowed)
    windowed.layer_types = ["sliding_attention"] + ["full_attention"] * (config.num_hidden_layers - 1)
    assert not packs_pairs(windowed)


def test_pair_attention_mask_keeps_the_answers_apart():
    from rl.reward_model import pair_attention_mask

    # prompt of 2, answer a of 2, answer b of 1, one pad column
    mask = pair_attention_mask(torch.tensor([[0, 0, 1, 1, 2, -1]]))[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0],
                    [1, 1, 0, 0, 1, 0],   # b sees the prompt and itself, never a
                    [0, 0, 0, 0, 0, 1]]   # padding: itself only
    additive = pair_attention_mask(torch.tensor([[0, 1, 2]]), torch.float32)[0, 0]
    assert additive[2, 1] == torch.finfo(torch.float32).min and additive[2, 0] == 0


# --- REINFORCE -----------------------------------------------------------------------------
def test_reinforce_losses_match_hand_computation():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0], [-0.5, 0.0]])
    values = torch.tensor([[0.1, 0.2], [0.3, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    out = reinforce_losses(logprobs, ref, values, mask, torch.tensor([1.0, -1.0]), beta=0.1)
    # KL: (-1 + 1.5) + (-2 + 1) = -0.5 for row 0; 0 for row 1 (its 2nd token is padding)
    assert out["kl"].tolist() == pytest.approx([-0.5, 0.0])
    # R = 0.9 r - 0.1 KL: 0.95 and -0.9
    assert out["returns"].tolist() == pytest.approx([0.95, -0.9])
    # policy: -[(-1)(0.95-0.1) + (-2)(0.95-0.2) + (-0.5)(-0.9-0.3)] / 2 = 0.875
    assert out["policy_loss"].item() == pytest.approx(0.875)
    # value: [(0.1-0.95)^2 + (0.2-0.95)^2 + (0.3+0.9)^2] / 2 = 1.3625
    assert out["value_loss"].item() == pytest.approx(1.3625)
    (out["policy_loss"] + out["value_loss"]).backward()
    # the advantage is a constant for the policy (stopgrad); the value gets 2 (V - Z) / B
    assert logprobs.grad.flatten().tolist() == pytest.approx([-0.425, -0.375, 0.6, 0.0])
    assert values.grad.flatten().tolist() == pytest.approx([-0.85, -0.75, 1.2, 0.0])


def share_of_letters(contexts, responses):
    return [sum(c in "abcdefghijklmnopqrstuvwxyz " for c in r) / max(len(r), 1) for r in responses]


PROMPTS = [f"Human: say {i}\n\nAssistant:" for i in range(8)]


def _run_rl(tiny_model_dir, beta, steps=30, **kw):
    cfg = RLConfig(batch_size=8, epochs=steps, learning_rate=1e-2, max_response_tokens=8, beta=beta,
                   save_every=1000, **kw)
    trainer = ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device="cpu")
    history = []
    trainer.train(PROMPTS, on_step=lambda step, total, m, texts: history.append(m))
    return history


def test_rl_reward_rises_kl_starts_at_zero_and_large_beta_stays_near_reference(tiny_model_dir):
    free = _run_rl(tiny_model_dir, beta=0.0)
    assert len(free) == 30
    assert free[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy *is* the reference at step 0
    mean = lambda h, key: sum(m[key] for m in h) / len(h)  # noqa: E731
    assert mean(free[-5:], "reward_mean") > mean(free[:5], "reward_mean") + 0.15
    tied = _run_rl(tiny_model_dir, beta=0.9)
    assert tied[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert mean(tied[-5:], "kl") < 0.25 * mean(free[-5:], "kl")
    for key in ("reward_std", "policy_loss", "value_loss", "entropy", "response_length", "seconds_per_step"):
        assert math.isfinite(free[-1][key])


def test_rl_resume_from_checkpoint_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    # AdamW here: Adafactor (the default) turns gradients near 0 into full-size steps of either
    # sign, so float rounding between two processes moves a few weights by the learning rate.
    # Its resume is checked on the step losses in the next test.
    cfg = RLConfig(batch_size=4, epochs=2, learning_rate=1e-2, max_response_tokens=6, save_every=2,
                   gradient_accumulation_steps=2, seed=5, optimizer="adamw")
    straight = ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device="cpu")
    straight_texts = []
    straight.train(PROMPTS, on_step=lambda step, total, m, texts: straight_texts.append(texts))
    assert straight.completed_steps == 4

    first = ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device="cpu")
    stop_after = 2

    class Stop(Exception):
        pass

    def crash(step, total, m, texts):
        if step == stop_after:  # dies during step 3, after the checkpoint of step 2
            raise Stop()

    with pytest.raises(Stop):
        first.train(PROMPTS, on_step=crash, checkpoint_dir=tmp_path)
    assert ReinforceTrainer.checkpoint_step(tmp_path) == 2
    steps, texts_after = [], []
    resumed = ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device="cpu",
                                        resume_from=tmp_path / "checkpoint")
    resumed.train(PROMPTS, on_step=lambda step, total, m, texts: (steps.append(step), texts_after.append(texts)),
                  checkpoint_dir=tmp_path)
    assert steps == [2, 3]
    # the same prompts, the same samples, the same weights (up to float rounding)
    assert texts_after == straight_texts[2:]
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()):
        assert torch.allclose(a, b, atol=1e-4)
    for a, b in zip(straight.value_model.parameters(), resumed.value_model.parameters()):
        assert torch.allclose(a, b, atol=1e-4)


def test_rl_resume_with_adafactor_repeats_the_step_losses(tiny_model_dir, tmp_path):
    cfg = RLConfig(batch_size=4, epochs=2, learning_rate=1e-2, max_response_tokens=6, save_every=2, seed=5)
    assert cfg.optimizer == "adafactor"
    keys = ("policy_loss", "value_loss", "policy_grad_norm", "value_grad_norm")
    straight = []
    ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device="cpu").train(
        PROMPTS, on_step=lambda step, total, m, texts: straight.append([m[k] for k in keys]))

    class Stop(Exception):
        pass

    def crash(step, total, m, texts):
        if step == 2:
            raise Stop()

    with pytest.raises(Stop):
        ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device="cpu").train(
            PROMPTS, on_step=crash, checkpoint_dir=tmp_path)
    resumed = ReinforceTrainer.from_sft(tiny_model_dir, share_of_letters, cfg, device="cpu",
                                        resume_from=tmp_path / "checkpoint")
    assert resumed.policy_optimizer.state_dict()["state"][0]["step"] == 2  # Adafactor's own state came back
    after = []
    resumed.train(PROMPTS, on_step=lambda step, total, m, texts: after.append([m[k] for k in keys]))
    assert len(after) == 2
    for got, expected in zip(after, straight[2:]):
        assert got == pytest.approx(expected, rel=1e-4)


# --- the optimizer -------------------------------------------------------------------------
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_batched_adafactor_steps_as_transformers_adafactor(tiny_model_dir, monkeypatch, weight_decay):
    """The batched step (rl.modeling.make_optimizer; on a GPU) against transformers' own, from the same weights
    and gradients: weights and state agree to float rounding over several steps, with 1-D and 2-D
    weights, a weight without a gradient, tensors split over several batches, and checkpoints load
    into either."""
    import rl.modeling
    from transformers.optimization import Adafactor

    monkeypatch.setattr(rl.modeling, "BATCHED_ADAFACTOR_DEVICES", ("cpu", "cuda"))  # batched here too
    monkeypatch.setattr(rl.modeling, "ADAFACTOR_BATCH_ELEMENTS", 5000)  # several batches, one tensor alone
    ours_model, theirs_model = load_causal_lm(tiny_model_dir, "cpu"), load_causal_lm(tiny_model_dir, "cpu")
    ours = make_optimizer(ours_model.parameters(), "adafactor", 1e-3, weight_decay)
    theirs = Adafactor(theirs_model.parameters(), lr=1e-3, weight_decay=weight_decay, scale_parameter=False,
                       relative_step=False, warmup_init=False)
    assert type(ours) is not Adafactor and isinstance(ours, Adafactor)
    skipped = "transformer.h.0.ln_1.bias"
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        for (name, a), b in zip(ours_model.named_parameters(), theirs_model.parameters()):
            g = None if name == skipped and step % 2 else torch.randn(a.shape, generator=gen) * 10 ** -(step % 3)
            a.grad, b.grad = g, None if g is None else g.clone()
        ours.step()
        theirs.step()
        for (name, a), b in zip(ours_model.named_parameters(), theirs_model.parameters()):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (step, name)
    assert any(not torch.equal(a, b) for a, b in zip(ours_model.parameters(), load_causal_lm(tiny_model_dir, "cpu")
                                                     .parameters()))  # they moved
    mine, hf = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert mine.keys() == hf.keys()
    for index in mine:
        assert mine[index]["step"] == hf[index]["step"]
        for key in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"):
            assert (key in mine[index]) == (key in hf[index])
            if key in mine[index]:
                assert torch.allclose(mine[index][key], hf[index][key], rtol=1e-6, atol=1e-12), (index, key)
    # a checkpoint of transformers' optimizer resumes in ours
    again = make_optimizer(ours_model.parameters(), "adafactor", 1e-3, weight_decay)
    again.load_state_dict(theirs.state_dict())
    assert again.state_dict()["state"][0]["step"] == 4


def test_batched_adafactor_takes_transformers_step_for_other_settings(tiny_model_dir):
    import rl.modeling

    model = load_causal_lm(tiny_model_dir, "cpu")
    opt = rl.modeling.batched_adafactor()(model.parameters(), lr=None, relative_step=True, warmup_init=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = [p.clone() for p in model.parameters()]
    opt.step()  # relative steps: transformers' own arithmetic
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert "RMS" in opt.state[next(model.parameters())] and torch.is_tensor(opt.state[next(model.parameters())]["RMS"])
