"""Human evaluation: rounds of prompts × policies, the annotator queue, and blinded rankings.

A round's *items* are its prompts; each item shows one sample per policy. An *assignment* is
one annotator's lease on one item (with the order in which that annotator sees the responses
and an opaque token used in URLs instead of any id). A *ranking* is what the annotator
submitted for an assignment; undo withdraws it (kept for the audit trail) and redo stores a
new one.

The tables keep the names they had when these models belonged to the ``evalsite`` app
(``Meta.db_table``): the queue's raw SQL and existing databases use them.
"""
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

ANNOTATORS_GROUP = "annotators"


def new_token():
    return secrets.token_urlsafe(18)


class EvalRound(models.Model):
    class Question(models.TextChoices):
        RANK = "rank", "Rank the responses"
        HARMLESS = "harmless", "Rate each response harmless or harmful"
        BOTH = "both", "Rank and rate harmlessness"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    name = models.CharField(
        max_length=200, unique=True,
        help_text="Internal name, seen by researchers only (it may name the policies).",
    )
    title = models.CharField(
        max_length=200, blank=True,
        help_text="What annotators see. Never name the policies here: it would break blinding.",
    )
    task = models.ForeignKey("evalsite.Task", on_delete=models.PROTECT, related_name="eval_rounds")
    question = models.CharField(max_length=10, choices=Question.choices, default=Question.RANK)
    instructions = models.TextField(blank=True, help_text="Shown on every item page; the task's instructions if empty.")
    overlap = models.PositiveSmallIntegerField(default=3, help_text="How many annotators rate each item.")
    deadline = models.DateTimeField(null=True, blank=True, help_text="No submissions are accepted after it.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    lease_minutes = models.PositiveIntegerField(
        default=30, help_text="An item an annotator opened but did not submit returns to the pool after this long.",
    )
    sample_index = models.PositiveIntegerField(default=0, help_text="Which sample of each policy to show (Sample.index).")
    policies = models.ManyToManyField("evalsite.Policy", related_name="eval_rounds")
    annotators = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="eval_rounds",
        help_text="Limit the round to these users; empty means everyone in the 'annotators' group.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "evalsite_evalround"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="evalround_overlap_positive"),
            models.CheckConstraint(condition=Q(lease_minutes__gte=1), name="evalround_lease_positive"),
        ]

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        # Which items are complete depends on the overlap, which may have just changed.
        self.items.filter(complete=True, n_submitted__lt=self.overlap).update(complete=False)
        self.items.filter(complete=False, n_submitted__gte=self.overlap).update(complete=True)

    def __str__(self):
        return self.name

    @property
    def display_title(self):
        return self.title or f"Evaluation round {self.pk}"

    @property
    def asks_rank(self):
        return self.question in (self.Question.RANK, self.Question.BOTH)

    @property
    def asks_harmless(self):
        return self.question in (self.Question.HARMLESS, self.Question.BOTH)

    @property
    def lease(self):
        return timedelta(minutes=self.lease_minutes)

    @property
    def is_past_deadline(self):
        return self.deadline is not None and timezone.now() >= self.deadline

    @property
    def accepts_work(self):
        return self.status == self.Status.OPEN and not self.is_past_deadline

    def instructions_text(self):
        return self.instructions or self.task.instructions


class EvalItem(models.Model):
    """One prompt of a round with the samples shown for it (one per policy)."""

    round = models.ForeignKey(EvalRound, on_delete=models.CASCADE, related_name="items")
    prompt = models.ForeignKey("evalsite.Prompt", on_delete=models.PROTECT, related_name="eval_items")
    position = models.PositiveIntegerField(default=0, help_text="Queue order within the round.")
    samples = models.ManyToManyField("evalsite.Sample", blank=True, related_name="eval_items")
    # Live (not withdrawn) rankings, kept in step by submit and undo: lets the queue skip full items cheaply.
    n_submitted = models.PositiveIntegerField(default=0)
    # n_submitted >= the round's overlap, kept in step with it (submit, undo, EvalRound.save).
    complete = models.BooleanField(default=False)

    class Meta:
        db_table = "evalsite_evalitem"
        ordering = ["round_id", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["round", "prompt"], name="evalitem_unique_round_prompt")]
        # The queue walks the items that still need answers in position order. Complete items
        # leave this index, so "next" does not walk past every item finished so far. No index
        # holds n_submitted: a submit that does not complete the item updates it in place (a HOT
        # update in PostgreSQL) instead of adding index entries.
        indexes = [
            models.Index(fields=["round", "position"], condition=Q(complete=False), name="evalitem_open_queue"),
        ]

    def __str__(self):
        return f"{self.round} item {self.position}"


class Assignment(models.Model):
    """One annotator's turn on one item: a lease while open, then submitted or skipped."""

    class Status(models.TextChoices):
        LEASED = "leased", "In progress"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"

    # No index of their own (db_index=False): the composite indexes below serve lookups by round
    # and by (item, annotator). With one, PostgreSQL on stale statistics chose it for the queue's
    # "had this item?" check and read all of an annotator's assignments for every item it passed.
    round = models.ForeignKey(EvalRound, on_delete=models.CASCADE, related_name="assignments", db_index=False)
    item = models.ForeignKey(EvalItem, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="eval_assignments", db_index=False,
    )
    # Opaque handle used in URLs and forms: ids would let an annotator enumerate or correlate.
    token = models.CharField(max_length=32, unique=True, default=new_token, editable=False)
    # Sample ids in the order shown (A, B, C, ...): random per annotator and item. Server side only.
    order = models.JSONField(default=list)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.LEASED)
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        db_table = "evalsite_assignment"
        ordering = ["round_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="assignment_unique_item_annotator"),
        ]
        indexes = [
            models.Index(fields=["item", "status", "expires_at"]),
            models.Index(fields=["round", "annotator", "status"]),
        ]

    def __str__(self):
        return f"{self.annotator} on {self.item} ({self.status})"

    @property
    def is_expired(self):
        return self.status == self.Status.LEASED and self.expires_at <= timezone.now()

    @staticmethod
    def label(i):
        """A, B, ..., Z, AA, AB, ... for the i-th shown response."""
        s = ""
        i += 1
        while i:
            i, r = divmod(i - 1, 26)
            s = chr(65 + r) + s
        return s

    @property
    def labels(self):
        return [self.label(i) for i in range(len(self.order))]


class Ranking(models.Model):
    """What an annotator submitted for an assignment. Undo sets ``withdrawn_at``; rows are never deleted."""

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="rankings")
    # (round, annotator, created_at) below serves lookups by round; a round-only index let the
    # planner count an annotator's answers by reading every answer in the round.
    round = models.ForeignKey(EvalRound, on_delete=models.CASCADE, related_name="rankings", db_index=False)
    item = models.ForeignKey(EvalItem, on_delete=models.CASCADE, related_name="rankings")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="eval_rankings")
    shown_order = models.JSONField(default=list, help_text="Sample ids in the order shown (A, B, ...).")
    comment = models.TextField(blank=True)
    time_on_page_ms = models.PositiveIntegerField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    idempotency_key = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "evalsite_ranking"
        ordering = ["round_id", "id"]
        constraints = [
            # At most one live ranking per assignment: a double submit cannot store two.
            models.UniqueConstraint(
                fields=["assignment"], condition=Q(withdrawn_at__isnull=True), name="ranking_one_live_per_assignment"
            ),
        ]
        indexes = [models.Index(fields=["round", "annotator", "created_at"])]

    def __str__(self):
        return f"Ranking {self.pk} by {self.annotator_id} on item {self.item_id}"


class RankedResponse(models.Model):
    """One response inside a ranking: its shown label and position, its rank and harmlessness."""

    ranking = models.ForeignKey(Ranking, on_delete=models.CASCADE, related_name="responses")
    sample = models.ForeignKey("evalsite.Sample", on_delete=models.PROTECT, related_name="+")
    label = models.CharField(max_length=4)
    position = models.PositiveSmallIntegerField()
    rank = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1 = best; empty in harmlessness-only rounds.")
    harmless = models.BooleanField(null=True, blank=True)

    class Meta:
        db_table = "evalsite_rankedresponse"
        ordering = ["ranking_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["ranking", "sample"], name="rankedresponse_unique_sample"),
            models.UniqueConstraint(fields=["ranking", "rank"], name="rankedresponse_no_ties"),
        ]

    def __str__(self):
        return f"{self.label}: rank {self.rank}"
