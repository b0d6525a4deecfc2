"""The chat backend and the honest top-k, against a real HTTP server (``labeling.serve``) that
answers with the tiny chat model's own numbers: chat layouts, labels, the direct scorer, chain of
thought, bounded labels (keep, re-ask, drop), usage and cost per label and run, 429 with
Retry-After, the dry run. The same against llama.cpp's server: tests/test_llama_server.py."""
import io
import math
import time
from decimal import Decimal

import pytest
import torch
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from evalsite.jobs import runtime as jobs
from evalsite.models import Comparison, Dataset, Prompt, Task
from evalsite.jobs.models import Job
from labeling import runs
from labeling.backends import (BackendError, ChatBackend, ChatBackendConfig, ChatPrompt, LocalBackendConfig,
                               LocalChatLayoutBackend, _retry_after_seconds, scores_from_alternatives)
from labeling.direct import DirectScorer
from labeling.models import AILabel, LabelerConfig
from labeling.prompts import Exemplar, PromptBuilder, chat_messages, make_template
from labeling.scoring import LabelerSettings, Pair, PreferenceLabeler, slot1_probability
from labeling.serve import CompletionServer

torch.set_num_threads(1)

SHOT = Exemplar("the fox ran", "fox ran", "a dog", 1, "The first says what happened.")
PAIRS = [Pair("a post about a fox " * (1 + i), "the fox" + " x" * i, "a dog" + " y" * (3 - i)) for i in range(3)]
ALL = 600  # more alternatives than the tiny vocabulary has: nothing is ever absent


@pytest.fixture(scope="module")
def local(tiny_chat_model_dir):
    # float32 everywhere: these tests compare a server's answers with the local numbers to 1e-5.
    return LocalChatLayoutBackend(LocalBackendConfig(str(tiny_chat_model_dir), batch_size=2, dtype="float32"))


@pytest.fixture
def server(local):
    servers = []

    def start(**kw):
        s = CompletionServer(local, **kw).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def chat(url, **kw):
    return ChatBackend(ChatBackendConfig(url=url, **{"top_logprobs": ALL, "concurrency": 2, **kw}))


# ---- layouts --------------------------------------------------------------------------------
def test_chat_layouts_of_a_label_prompt():
    builder = PromptBuilder(make_template("summarization", "base"), [SHOT])
    prompt = builder.label_prompt("CTX", "AAA", "BBB")
    preamble = make_template("summarization", "base").preamble
    turns = chat_messages(prompt, "system", "turns")
    assert turns == [
        {"role": "system", "content": preamble},
        {"role": "user", "content": "Text - the fox ran\nSummary 1 - fox ran\nSummary 2 - a dog\n\nPreferred Summary="},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Text - CTX\nSummary 1 - AAA\nSummary 2 - BBB\n\nPreferred Summary="},
    ]
    # preamble as user text, exemplars inline: one user message, the plain prompt
    assert chat_messages(prompt, "user", "inline") == [{"role": "user", "content": prompt.plain()}]
    user_turns = chat_messages(prompt, "user", "turns")
    assert [m["role"] for m in user_turns] == ["user", "assistant", "user"]
    assert user_turns[0]["content"].startswith(preamble + "\n\nText - the fox ran")
    with pytest.raises(ValueError, match="preamble role"):
        chat_messages(prompt, "developer", "turns")


def test_chain_of_thought_replays_the_rationale_as_the_models_turn():
    builder = PromptBuilder(make_template("summarization", "base"), [SHOT], chain_of_thought=True)
    step1 = chat_messages(builder.rationale_prompt("CTX", "AAA", "BBB"), "system", "turns")
    step2 = chat_messages(builder.label_prompt("CTX", "AAA", "BBB", rationale=" the first is right "), "system", "turns")
    assert [m["role"] for m in step1] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert step1[1]["content"].endswith("explain which one is better.\n\nRationale:")
    assert step1[2]["content"] == "The first says what happened." and step1[4]["content"] == "1"
    assert step1[-1]["content"].endswith("Summary 2 - BBB\n\nConsider the coherence, accuracy, coverage, and overall "
                                         "quality of each summary and explain which one is better.\n\nRationale:")
    # step 2: the conversation of step 1, the model's rationale, then the ending asked
    assert step2[:-2] == step1
    assert step2[-2:] == [{"role": "assistant", "content": "the first is right"},
                          {"role": "user", "content": "Preferred Summary="}]
    score = PromptBuilder(make_template("helpful")).score_prompt("Human: hi", "Hello")
    assert chat_messages(score, "user", "inline") == [{"role": "user", "content": score.plain()}]


# ---- labels, scores and chain of thought against a real server --------------------------------
@pytest.mark.parametrize("role,layout", [("system", "turns"), ("user", "inline")])
def test_chat_labels_equal_the_local_model_on_the_same_messages(local, server, role, layout):
    srv = server()
    remote = chat(srv.url, preamble_role=role, exemplars=layout)
    local.preamble_role, local.exemplars = role, layout
    settings = LabelerSettings(exemplars=[SHOT])
    got = PreferenceLabeler(remote, settings).label(PAIRS)
    want = PreferenceLabeler(local, settings).label(PAIRS)
    for g, w in zip(got, want):
        assert g.p_slot1_order1 == pytest.approx(w.p_slot1_order1, abs=1e-5)
        assert g.p_slot1_order2 == pytest.approx(w.p_slot1_order2, abs=1e-5)
        assert g.p_first == pytest.approx(w.p_first, abs=1e-5) and not g.bounded
        assert g.label_mass == pytest.approx(w.label_mass, rel=1e-4)
        # usage: the server's prompt tokens of both orders, one completion token each
        assert g.prompt_tokens == w.prompt_tokens > 0 and g.completion_tokens == 2
    sent = srv.bodies[0]
    assert sent["logprobs"] is True and sent["top_logprobs"] == ALL and sent["max_tokens"] == 1
    assert sent["messages"][0]["role"] == ("system" if role == "system" else "user")
    assert len(sent["messages"]) == (4 if layout == "turns" else 1)


def test_chat_direct_scores_match_the_local_model_and_say_what_is_unresolved(local, server):
    srv = server()
    local.preamble_role, local.exemplars = "system", "turns"
    contexts, responses = ["Human: hi", "Human: help me"], ["Hello there", "No."]
    got = DirectScorer(chat(srv.url), "helpful").score(contexts, responses)
    want = DirectScorer(local, "helpful").score(contexts, responses)
    for g, w in zip(got, want):
        assert sum(g.probs) == pytest.approx(1)
        # Scores 2..9 are single tokens: exact. A "1" the reply did not start with may be a 10,
        # so its share sits in unseen_mass, and the local 1 and 10 together equal the chat's.
        ratio = g.mass / w.mass
        for d in range(1, 9):
            assert g.probs[d] * ratio == pytest.approx(w.probs[d], abs=1e-5)
        assert (g.probs[0] + g.probs[9]) * ratio == pytest.approx(w.probs[0] + w.probs[9], abs=1e-5)
        assert g.unseen_mass >= w.probs[0] * w.mass - 1e-6
    assert all(b["max_tokens"] == 2 for b in srv.bodies)


def test_chat_chain_of_thought_generates_then_reads_the_label(local, server):
    srv = server()
    settings = LabelerSettings(chain_of_thought=True, cot_max_tokens=6)
    res = PreferenceLabeler(chat(srv.url), settings).label(PAIRS[:1])[0]
    generate, label = srv.bodies[0], srv.bodies[-1]
    assert "logprobs" not in generate and generate["max_tokens"] == 6
    assert generate["messages"][-1]["content"].endswith("Rationale:")
    assert label["messages"][-2]["role"] == "assistant" and label["messages"][-1]["content"] == "Preferred Summary="
    assert label["messages"][-2]["content"] == res.rationales["order2"][0]
    assert len(srv.bodies) == 4 and 0 <= res.p_first <= 1 and res.completion_tokens > 2


def test_a_server_without_logprobs_is_a_clear_error(server):
    srv = server(logprobs=False)
    with pytest.raises(BackendError, match="chat server .* returned no token log-probabilities"):
        PreferenceLabeler(chat(srv.url, max_retries=0), LabelerSettings()).label(PAIRS[:1])


# ---- truncated top-k ------------------------------------------------------------------------
def test_an_absent_label_token_is_bounded_not_zero():
    alternatives = [("Pre", math.log(0.5)), ("1", math.log(0.3)), ("The", math.log(0.1))]
    sc = scores_from_alternatives(alternatives, ("1", "2"), 10, 1)
    assert sc.absent == ("2",) and sc.unseen_mass == pytest.approx(0.1)
    assert math.exp(sc.absent_bound_logprob) == pytest.approx(0.1)  # the smallest returned, and the unseen mass
    p, low, high = slot1_probability(sc)
    assert p == pytest.approx(0.3 / 0.4) and low == pytest.approx(0.3 / 0.4) and high == 1.0
    # what the alternatives leave unseen bounds it when that is less than the smallest one
    sc = scores_from_alternatives([("1", math.log(0.7)), ("A", math.log(0.29))], ("1", "2"))
    assert math.exp(sc.absent_bound_logprob) == pytest.approx(0.01)
    both = scores_from_alternatives([("A", math.log(0.9))], ("1", "2"))
    assert slot1_probability(both) == (0.5, 0.0, 1.0)


def test_few_alternatives_bound_the_labels_and_reask_makes_them_exact(local, server):
    local.preamble_role, local.exemplars = "system", "turns"
    want = PreferenceLabeler(local, LabelerSettings()).label(PAIRS)
    srv = server()
    kept = PreferenceLabeler(chat(srv.url, top_logprobs=1), LabelerSettings()).label(PAIRS)
    assert all(r.bounded for r in kept)  # the tiny model's first choice is never a label
    for g, w in zip(kept, want):
        assert g.p_first_low - 1e-9 <= w.p_first <= g.p_first_high + 1e-9
        assert g.p_first_low < g.p_first_high and 0 < g.p_first < 1 and g.unseen_mass > 0
    n = len(srv.bodies)
    reasked = PreferenceLabeler(chat(srv.url, top_logprobs=1),
                                LabelerSettings(absent_labels="reask", reask_top_logprobs=ALL)).label(PAIRS)
    assert [b["top_logprobs"] for b in srv.bodies[n:]] == [1] * 6 + [ALL] * 6
    for g, w in zip(reasked, want):
        assert not g.bounded and g.p_first == pytest.approx(w.p_first, abs=1e-5)
        assert g.completion_tokens == 4  # both asks of both orders were paid for


# ---- HTTP: rate limits ----------------------------------------------------------------------
def test_429_waits_what_retry_after_asks_without_using_up_the_retries(server):
    srv = server(rate_limit_first=2, retry_after="0.3")
    remote = chat(srv.url, max_retries=0)
    t = time.perf_counter()
    assert remote.top_logprobs("Answer with 1 or 2. Answer=")
    assert time.perf_counter() - t >= 0.6 and srv.requests == 3
    srv = server(rate_limit_first=3, retry_after="0")
    with pytest.raises(BackendError, match="did not answer after 1 attempts, 2 rate-limit waits"):
        chat(srv.url, max_retries=0, rate_limit_retries=2).top_logprobs("x")
    assert _retry_after_seconds("2.5") == 2.5 and _retry_after_seconds("soon") is None
    assert 8 <= _retry_after_seconds(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))) <= 10


def test_chat_prompt_token_counts_use_the_local_chat_template(local, tiny_chat_model_dir):
    remote = chat("http://127.0.0.1:9/v1", tokenizer_path=str(tiny_chat_model_dir))
    prompt = PromptBuilder(make_template("summarization")).label_prompt("c", "a", "b")
    rendered = remote.render(prompt)
    assert isinstance(rendered, ChatPrompt) and rendered.messages[0][0] == "system"
    local.preamble_role, local.exemplars = "system", "turns"
    assert remote.count_tokens(rendered) == local.count_tokens(local.render(prompt))


# ---- the app: configs, runs, usage, cost, drop, the dry run -----------------------------------
def make_comparisons(n):
    ds = Dataset.objects.create(name="chat-test", split="test", task=Task.objects.get(slug="summarization"))
    return ds, [Comparison.objects.create(
        prompt=Prompt.objects.create(dataset=ds, external_id=str(i), context=f"a post about a fox {i}"),
        response_a=f"the fox {i}", response_b=f"a dog {i}", human_preference="first", human_source="dataset")
        for i in range(n)]


def chat_config(url, **kw):
    return LabelerConfig.objects.create(**{
        "name": "chat", "task": Task.objects.get(slug="summarization"), "backend": "chat", "server_url": url,
        "server_model": "tiny", "server_top_logprobs": ALL, "price_prompt_per_mtok": Decimal("2.5"),
        "price_completion_per_mtok": Decimal("10"), **kw})


def run_synchronously(params):
    run = jobs.submit("label", params, send=False)
    assert jobs.execute(run.pk) == "running"  # its chunks do the work
    for child in Job.objects.filter(parent=run).order_by("pk"):
        jobs.execute(child.pk)
    run.refresh_from_db()
    return run


def served_prompt_tokens(local, bodies):
    """The prompt tokens of these chat requests, counted with the model's chat template."""
    return sum(local.count_tokens(local.tokenizer.apply_chat_template(b["messages"], tokenize=False,
                                                                       add_generation_prompt=True)) for b in bodies)


@pytest.mark.django_db
def test_a_chat_run_stores_usage_per_label_and_totals_and_cost_per_run(local, server, client, researcher):
    srv = server()
    ds, comps = make_comparisons(3)
    config = chat_config(srv.url)
    run = run_synchronously({"config_id": config.pk, "dataset_id": ds.pk, "chunk_size": 2})
    assert run.status == "succeeded"
    labels = list(AILabel.objects.filter(config=config))
    assert len(labels) == 3 and all(lab.completion_tokens == 2 and not lab.bounded for lab in labels)
    prompt = served_prompt_tokens(local, srv.bodies)
    assert sum(lab.prompt_tokens for lab in labels) == prompt == run.result["prompt_tokens"] > 0
    assert run.result["completion_tokens"] == 6 and run.result["bounded"] == run.result["dropped"] == 0
    assert run.result["cost_usd"] == pytest.approx((2.5 * prompt + 10 * 6) / 1e6)
    assert f"{prompt:,} prompt + 6 completion tokens ($" in run.message
    client.force_login(researcher)
    page = client.get(f"/admin/labeling/labelerconfig/{config.pk}/change/").content.decode()
    assert f"{prompt} prompt, 6 completion" in page and f"${run.result['cost_usd']:.4f}" in page
    report = client.get(reverse("reports:labelers")).content.decode()
    assert "Tokens and cost" in report and f"{run.result['cost_usd']:.4f}" in report
    usage = client.get(reverse("reports:labelers_export", args=["usage", "json"])).json()
    assert usage == [{**usage[0], "config_name": "chat", "n_labels": 3, "n_bounded": 0, "prompt_tokens": prompt,
                      "completion_tokens": 6}]


@pytest.mark.django_db
@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_bounded_labels_are_kept_marked_or_dropped_as_the_config_says(server, client, researcher, policy):
    srv = server()
    ds, comps = make_comparisons(3)
    config = chat_config(srv.url, server_top_logprobs=1, absent_labels=policy)
    run = run_synchronously({"config_id": config.pk, "dataset_id": ds.pk})
    assert run.status == "succeeded"
    labels = AILabel.objects.filter(config=config)
    if policy == "keep":
        assert labels.count() == 3 and all(lab.bounded for lab in labels)
        assert all(lab.p_first_low <= lab.p_first <= lab.p_first_high and lab.unseen_mass > 0 for lab in labels)
        assert run.result["bounded"] == 3 and "3 bounded labels" in run.message
        client.force_login(researcher)
        data = client.get(reverse("reports:labelers_export", args=["alignment", "json"])).json()
        assert data[0]["n_bounded"] == 3 and data[0]["n"] == 3
    else:
        assert labels.count() == 0 and run.result["dropped"] == 3 and "3 dropped" in run.message
        assert run.result["completion_tokens"] == 6  # the dropped pairs' requests were paid for
    with pytest.raises(ValidationError, match="finds nothing the first ask"):
        LabelerConfig(name="x", task=config.task, backend="chat", server_url=srv.url, absent_labels="reask",
                      server_top_logprobs=20, reask_top_logprobs=20).full_clean()


@pytest.mark.django_db
def test_the_dry_run_counts_requests_and_tokens_and_sends_nothing(local, server, client, researcher,
                                                                  tiny_chat_model_dir):
    srv = server()
    ds, comps = make_comparisons(4)
    config = chat_config(srv.url, model_path=str(tiny_chat_model_dir))  # a local tokenizer: exact counts
    out = io.StringIO()
    call_command("label_estimate", "chat", "--dataset", "chat-test", stdout=out)
    text = out.getvalue()
    assert srv.requests == 0 and "nothing was sent" in text
    assert "4 comparisons selected, 0 already labeled by this config, 4 to label" in text
    estimate = runs.estimate_run(runs.validate_run_params({"config_id": config.pk, "dataset_id": ds.pk}))
    assert estimate["requests"] == 8 and estimate["completion_tokens"] == 8 and srv.requests == 0
    assert f"8 requests, {estimate['prompt_tokens']:,} prompt tokens, 8 completion tokens" in text
    assert f"cost: ${estimate['cost_usd']:.4f}" in text
    run = run_synchronously({"config_id": config.pk, "dataset_id": ds.pk})
    assert estimate["prompt_tokens"] == run.result["prompt_tokens"] == served_prompt_tokens(local, srv.bodies)

    client.force_login(researcher)
    page = client.post(f"/admin/labeling/labelerconfig/{config.pk}/label/",
                       {"dataset": ds.pk, "chunk_size": 64, "relabel": "on", "estimate": "1"})
    html = page.content.decode()
    assert page.status_code == 200 and "Estimate (nothing was sent)" in html and "4 to label" in html
    assert Job.objects.filter(kind="label").count() == 1 and srv.requests == 8
    # a local config: counted with its tokenizer, without loading the model; the run's counts agree
    tiny = LabelerConfig.objects.create(name="tiny-local", task=config.task, model_path=str(tiny_chat_model_dir))
    local_estimate = runs.estimate_run(runs.validate_run_params({"config_id": tiny.pk, "dataset_id": ds.pk}))
    local_run = run_synchronously({"config_id": tiny.pk, "dataset_id": ds.pk})
    assert local_estimate["requests"] == 8 and local_estimate["cost_usd"] is None
    assert local_estimate["prompt_tokens"] == local_run.result["prompt_tokens"] > 0
    with pytest.raises(CommandError, match="No labeler config named 'nope'"):
        call_command("label_estimate", "nope", "--dataset", "chat-test")
    with pytest.raises(CommandError, match="No comparisons match"):
        call_command("label_estimate", "chat", "--dataset", "chat-test", "--human-labeled-only",
                     "--comparison-ids", "999999")
