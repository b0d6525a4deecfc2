"""Build a ready-to-annotate round with synthetic prompts and samples (tests, benchmark, demos)."""
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from evalsite.humaneval import rounds as R
from evalsite.humaneval.models import ANNOTATORS_GROUP, EvalRound
from evalsite.models import Dataset, Policy, Prompt, Sample, Task

DIALOGUE = (
    "Human: My neighbour's dog barks all night. What can I do?\n\n"
    "Assistant: That sounds exhausting. Have you talked to your neighbour about it?\n\n"
    "Human: Yes, twice. Nothing changed. Prompt {i}."
)
POST = (
    "SUBREDDIT: r/relationships\nTITLE: My roommate never does the dishes ({i})\n"
    "POST: We have lived together for two years. At first we split chores evenly, but since she started a new "
    "job the dishes pile up for days. I don't want to ruin the friendship. How do I bring it up?"
)


def make_annotators(n, prefix="annotator", password=None):
    group, _ = Group.objects.get_or_create(name=ANNOTATORS_GROUP)
    User = get_user_model()
    users = []
    for i in range(n):
        u, created = User.objects.get_or_create(username=f"{prefix}{i}")
        if created or password:
            if password:
                u.set_password(password)
            else:
                u.set_unusable_password()
            u.save()
        u.groups.add(group)
        users.append(u)
    return users


def make_round(*, n_prompts=10, policy_names=("policy-sft", "policy-rlhf", "policy-rlaif"), overlap=2,
               question=EvalRound.Question.RANK, task_slug="harmless", name="demo round", title="Demo round",
               open=True, policy_pk_base=None, sample_pk_base=None, lease_minutes=30, prompts_per_batch=1000):
    """A round over ``n_prompts`` fresh prompts with one sample per policy; opened unless ``open=False``.

    ``policy_pk_base`` / ``sample_pk_base`` give policies and samples explicit, distinctive ids
    (blinding tests search pages for them).
    """
    task = Task.objects.get(slug=task_slug)
    dataset, _ = Dataset.objects.get_or_create(name=f"{name} prompts", split="test", task=task)
    template = POST if task_slug == "summarization" else DIALOGUE
    Prompt.objects.bulk_create(
        [Prompt(dataset=dataset, external_id=f"p{i}", context=template.format(i=i)) for i in range(n_prompts)],
        batch_size=prompts_per_batch,
    )
    prompts = list(Prompt.objects.filter(dataset=dataset).order_by("id"))
    policies = []
    for j, pname in enumerate(policy_names):
        kw = {"pk": policy_pk_base + j} if policy_pk_base else {}
        policies.append(Policy.objects.create(name=pname, kind=Policy.Kind.OTHER, **kw))
    samples = []
    k = 0
    for p in prompts:
        for j, pol in enumerate(policies):
            kw = {"pk": sample_pk_base + k} if sample_pk_base else {}
            k += 1
            text = f"Response number {j + 1} to prompt {p.external_id}: " + ("try talking again, calmly. " * (j + 1))
            samples.append(Sample(policy=pol, prompt=p, index=0, text=text.strip(), token_count=10 * (j + 1), **kw))
    Sample.objects.bulk_create(samples, batch_size=prompts_per_batch)
    rnd = EvalRound.objects.create(name=name, title=title, task=task, question=question, overlap=overlap,
                                   lease_minutes=lease_minutes)
    rnd.policies.set(policies)
    R.set_prompts(rnd, [p.pk for p in prompts])
    if open:
        rnd = R.open_round(rnd)
    return rnd
