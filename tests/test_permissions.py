"""Who may open the researcher pages: Django model permissions (the "researcher" group), not the staff flag.

Every named URL outside the annotator's pages, logging in and out, and the admin is visited by an
anonymous user (login page), a staff member without permissions (403), an annotator (403) and a
staff member of the "researcher" group (the page). The URLs come from the URLconf: a new page
fails here until it has arguments below and a permission check. The admin's own pages and its
custom views are checked the same way.
"""
import io
import re

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.urls import URLResolver, get_resolver, resolve, reverse

from evalsite.experiments.views import CANCEL_PERMISSIONS, LAUNCH_PERMISSIONS
from evalsite.humaneval.models import EvalRound
from evalsite.models import Dataset, Policy, Task
from evalsite.experiments.models import Experiment
from evalsite.jobs.models import Job, JobMetric
from evalsite.experiments.models import Experiment
from evalsite.jobs.models import Job, JobMetric
from evalsite.reports import views as report_views
from evalsite.views import OVERVIEW_PERMISSIONS
from labeling.models import LabelerConfig
from rl.forms import FORMS
from rl.views import KIND_PERMISSIONS
from tests import humaneval_demo as demo
from tests.test_stats import label_rows

# What migration 0010 grants the "researcher" group, spelled out again: the test fails when either changes.
# Jobs, experiments, rounds and rankings were evalsite's then; the first migrations of the jobs,
# experiments and humaneval apps moved their content types, permissions included.
RESEARCH_MODELS = {
    "evalsite": ["task", "dataset", "prompt", "policy", "sample", "comparison"],
    "jobs": ["job"],
    "experiments": ["experiment"],
    "humaneval": ["evalround", "ranking"],
    "labeling": ["labelerconfig", "ailabel"],
    "rl": ["rewardmodel"],
}
RESEARCHER_PERMISSIONS = {f"{app}.{action}_{model}" for app, models in RESEARCH_MODELS.items() for model in models
                          for action in ("view", "add", "change", "delete")}

# Not researcher pages: the annotator's (tests/test_humaneval.py), the admin (checked below), logging in and out.
OTHER_NAMESPACES = {"humaneval", "admin"}
OTHER_NAMES = {"login", "logout"}
POSTS = {"experiments:launch", "experiments:cancel"}  # these answer POST only, with a redirect


def site_url_names(patterns=None, prefix=""):
    """'namespace:name' of every named URL of the site, outside the other namespaces."""
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            if p.namespace not in OTHER_NAMESPACES:
                yield from site_url_names(p.url_patterns, f"{prefix}{p.namespace}:" if p.namespace else prefix)
        elif p.name and p.name not in OTHER_NAMES:
            yield prefix + p.name


def group_permissions(group):
    return {f"{app}.{codename}" for app, codename in
            group.permissions.values_list("content_type__app_label", "codename")}


@pytest.fixture
def objects(db):
    """One of each thing the researcher pages show."""
    rnd = demo.make_round(n_prompts=2, overlap=1, name="perm round")
    task = Task.objects.get(slug="summarization")
    dataset = Dataset.objects.create(name="perm data", split="train", task=task)
    base = Policy.objects.create(name="perm base", kind=Policy.Kind.OTHER)
    job = Job.objects.create(kind="rl", name="perm rl run", status=Job.Status.RUNNING)
    JobMetric.objects.create(job=job, step=0, values={"reward": 0.5})
    exp = Experiment.objects.create(name="perm experiment", task=task, dataset=dataset, base_policy=base,
                                    arms=["sft"])
    config = LabelerConfig.objects.create(name="perm labeler", task=task, model_path="nowhere")
    return {"round": rnd, "job": job, "experiment": exp, "labeler": config, "dataset": dataset}


def site_urls(objects):
    """Every researcher URL with real arguments; a URL name this does not know fails the test."""
    round_pk, job_pk, exp_pk = objects["round"].pk, objects["job"].pk, objects["experiment"].pk
    args = {
        "jobs:status": [[]], "jobs:detail-json": [[job_pk]],
        "reports:index": [[]], "reports:round": [[round_pk]], "reports:round_export": [[round_pk, "progress", "csv"]],
        "reports:labelers": [[]], "reports:labelers_export": [["alignment", "json"]],
        "reports:jobs": [[]], "reports:job": [[job_pk]], "reports:job_export": [[job_pk, "csv"]],
        "experiments:detail": [[exp_pk]], "experiments:detail-json": [[exp_pk]],
        "experiments:launch": [[exp_pk]], "experiments:cancel": [[exp_pk]],
        "rl:index": [[]], "rl:start": [[kind] for kind in FORMS],
    }
    names = sorted(set(site_url_names()) - {"home"})
    unknown = [n for n in names if n not in args]
    assert not unknown, f"new researcher URLs {unknown}: give their views a permission check and add them here"
    return [(name, reverse(name, args=a)) for name in names for a in args[name]]


def fetch(client, name, url):
    return client.post(url) if name in POSTS else client.get(url)


@pytest.fixture
def researcher_group(db):
    return Group.objects.get(name="researcher")  # made by migration 0010


@pytest.fixture
def member(researcher_group, django_user_model):
    user = django_user_model.objects.create_user("perm-researcher", password="pw", is_staff=True)
    user.groups.add(researcher_group)
    return user


@pytest.fixture
def staff(db, django_user_model):
    return django_user_model.objects.create_user("perm-staff", password="pw", is_staff=True)


@pytest.fixture
def labels(monkeypatch):
    monkeypatch.setattr(report_views, "load_labels", lambda config_ids=None: label_rows())


def test_the_researcher_group_has_exactly_the_research_permissions(researcher_group):
    assert group_permissions(researcher_group) == RESEARCHER_PERMISSIONS
    assert not {p for p in RESEARCHER_PERMISSIONS if p.startswith("auth.")}


def test_every_researcher_view_checks_permissions_the_group_has(objects, researcher_group):
    granted = group_permissions(researcher_group)
    for name, url in site_urls(objects):
        perms = getattr(resolve(url).func, "required_permissions", None)
        assert perms, f"{name} ({url}) checks no permission"
        assert set(perms) <= granted, (name, set(perms) - granted)
    assert set(KIND_PERMISSIONS) == set(FORMS)
    for needed in [*KIND_PERMISSIONS.values(), LAUNCH_PERMISSIONS, CANCEL_PERMISSIONS, OVERVIEW_PERMISSIONS]:
        assert set(needed) <= granted, needed


def test_anonymous_users_go_to_the_login_page(client, objects):
    for name, url in site_urls(objects):
        r = fetch(client, name, url)
        assert r.status_code == 302 and r["Location"].startswith(reverse("login") + "?next="), name


def test_staff_and_annotators_without_permissions_are_refused(client, objects, staff):
    annotator = demo.make_annotators(1, prefix="perm-ann")[0]
    urls = site_urls(objects) + [
        # The round's annotators by name: 403 before the view looks for data.
        ("reports:round_export", reverse("reports:round_export", args=[objects["round"].pk, "annotators", "csv"])),
    ]
    for user in (staff, annotator):
        client.force_login(user)
        for name, url in urls:
            assert fetch(client, name, url).status_code == 403, (user, name, url)
    objects["experiment"].refresh_from_db()
    assert objects["experiment"].status == Experiment.Status.DRAFT and not objects["experiment"].cancel_requested


def test_researchers_open_every_page(client, objects, member, labels):
    client.force_login(member)
    for name, url in site_urls(objects):
        r = fetch(client, name, url)
        if name in POSTS:
            assert r.status_code == 302 and r["Location"] == reverse("experiments:detail",
                                                                     args=[objects["experiment"].pk]), name
        else:
            assert r.status_code == 200, (name, url, r.status_code)


def test_each_permission_counts_not_only_one_of_them(client, objects, django_user_model):
    """A round report needs the rankings too; a training job needs what its kind writes."""
    user = django_user_model.objects.create_user("perm-partial", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_evalround"),
                              Permission.objects.get(codename="add_job"))
    client.force_login(user)
    assert client.get(reverse("reports:round", args=[objects["round"].pk])).status_code == 403
    assert client.get(reverse("rl:start", args=["sft"])).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_ranking"),
                              Permission.objects.get(content_type__app_label="evalsite", codename="add_policy"))
    user = django_user_model.objects.get(pk=user.pk)  # permissions are cached on the user object
    client.force_login(user)
    assert client.get(reverse("reports:round", args=[objects["round"].pk])).status_code == 200
    assert client.get(reverse("rl:start", args=["sft"])).status_code == 200
    assert client.get(reverse("rl:start", args=["reward_model"])).status_code == 403


def test_home_shows_the_overview_and_links_by_permission(client, objects, staff, member):
    client.force_login(staff)
    html = client.get(reverse("home")).content.decode()
    assert "Workbench" not in html and reverse("reports:index") not in html
    client.force_login(member)
    html = client.get(reverse("home")).content.decode()
    for url in (reverse("admin:evalsite_dataset_import"), reverse("reports:index"), reverse("reports:labelers"),
                reverse("admin:experiments_experiment_add"), reverse("experiments:detail", args=[objects["experiment"].pk])):
        assert url in html, url
    # May see everything, may start nothing: no import or new-experiment links.
    viewer = get_user_model().objects.create_user("perm-viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client.force_login(viewer)
    html = client.get(reverse("home")).content.decode()
    assert "Workbench" in html and reverse("reports:index") in html
    assert reverse("admin:evalsite_dataset_import") not in html and reverse("admin:experiments_experiment_add") not in html
    page = client.get(reverse("experiments:detail", args=[objects["experiment"].pk])).content.decode()
    assert reverse("experiments:launch", args=[objects["experiment"].pk]) not in page


# --- the admin ----------------------------------------------------------------------------------

def research_admins():
    return [(model, model_admin) for model, model_admin in admin.site._registry.items()
            if model._meta.app_label in RESEARCH_MODELS]


def test_admin_lists_need_the_view_permission(client, objects, staff, member):
    assert len(research_admins()) == sum(len(m) for m in RESEARCH_MODELS.values())  # every research model, once
    for user, status in ((staff, 403), (member, 200)):
        client.force_login(user)
        for model, _ in research_admins():
            url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
            assert client.get(url).status_code == status, (user, url)


STANDARD_ADMIN_VIEW = re.compile(r"_(changelist|add|change|delete|history)$")


def custom_admin_urls(objects):
    """The admin's own pages beyond Django's: each must check permissions, not only the staff flag."""
    args = {
        "evalsite_dataset_import": [], "jobs_job_cancel": [objects["job"].pk],
        "jobs_job_resume": [objects["job"].pk], "humaneval_evalround_open": [objects["round"].pk],
        "humaneval_evalround_close": [objects["round"].pk], "humaneval_evalround_sample": [objects["round"].pk],
        "labeling_labelerconfig_label": [objects["labeler"].pk], "evalsite_export_preferences": [],
    }
    names = set()
    for model, model_admin in research_admins():
        names |= {p.name for p in model_admin.get_urls() if p.name and not STANDARD_ADMIN_VIEW.search(p.name)}
    assert names == set(args), f"custom admin views changed: {names ^ set(args)}; check their permissions"
    return {name: reverse(f"admin:{name}", args=a) for name, a in args.items()}


def state():
    return (list(Job.objects.order_by("pk").values_list("pk", "status", "cancel_requested")),
            list(EvalRound.objects.order_by("pk").values_list("pk", "status")))


def test_custom_admin_views_refuse_staff_without_permissions(client, objects, staff):
    client.force_login(staff)
    before = state()
    for name, url in custom_admin_urls(objects).items():
        for r in (client.get(url), client.post(url)):
            assert r.status_code == 403 or (r.status_code == 302 and "/admin/" in r["Location"]), (name, r.status_code)
    assert state() == before
    r = client.post(reverse("admin:evalsite_dataset_import"), {"format": "hh", "split": "train"})
    assert r.status_code == 403


def test_researchers_use_the_custom_admin_views(client, objects, member):
    client.force_login(member)
    urls = custom_admin_urls(objects)
    assert client.get(urls["evalsite_dataset_import"]).status_code == 200
    assert client.get(urls["labeling_labelerconfig_label"]).status_code == 200
    assert client.get(urls["evalsite_export_preferences"] + f"?rounds={objects['round'].pk}").status_code == 200
    assert client.get(reverse("admin:evalsite_dataset_changelist")).content.decode().count(
        urls["evalsite_dataset_import"]) == 1
    client.post(urls["jobs_job_cancel"])
    objects["job"].refresh_from_db()
    assert objects["job"].cancel_requested
    client.post(urls["humaneval_evalround_close"])
    objects["round"].refresh_from_db()
    assert objects["round"].status == EvalRound.Status.CLOSED


def test_experiment_admin_actions_need_the_launch_and_cancel_permissions(rf, objects, member, django_user_model):
    model_admin = admin.site._registry[Experiment]
    viewer = django_user_model.objects.create_user("perm-exp-viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_experiment"),
                                Permission.objects.get(codename="change_experiment"))
    for user, actions in ((viewer, set()), (member, {"launch", "cancel"})):
        request = rf.get("/admin/experiments/experiment/")
        request.user = user
        assert set(model_admin.get_actions(request)) & {"launch", "cancel"} == actions, user


def test_the_demo_researcher_is_in_the_group_and_not_a_superuser(client, objects, labels, researcher_group):
    call_command("setup_demo", "--skip-model", "--no-experiment", stdout=io.StringIO())
    user = get_user_model().objects.get(username="researcher")
    assert user.is_staff and not user.is_superuser
    assert list(user.groups.all()) == [researcher_group]
    assert user.check_password("researcher-demo")
    client.force_login(user)
    for name, url in site_urls(objects):
        assert fetch(client, name, url).status_code in (200, 302), name
    assert client.get(reverse("admin:evalsite_dataset_import")).status_code == 200
    annotator = get_user_model().objects.get(username="annotator")
    assert not annotator.is_staff and [g.name for g in annotator.groups.all()] == ["annotators"]
