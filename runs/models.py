"""Conversations, their messages, and the backend runs that answered them.

Django keeps the whole transcript in both memory modes; the backend thread is only what the
assistant remembers.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Signed-in users own by `owner`; anonymous visitors by their session key.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="conversations",
    )
    session_key = models.CharField(max_length=64, blank=True, db_index=True)
    title = models.CharField(max_length=200, blank=True)
    memory = models.BooleanField(
        default=True, help_text="On: messages go to the backend thread and are remembered."
    )
    thread_id = models.CharField(
        max_length=64, blank=True, help_text="The backend thread that holds the memory."
    )
    # Set when a remembered message found the thread gone: the next reply starts afresh.
    memory_lost_at = models.DateTimeField(null=True, blank=True)
    active_run = models.ForeignKey(
        "Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # While shared, anyone with the link /s/<share_token>/ may read the transcript as it stood
    # at shared_at: a copy that later messages join only when the owner shares it again.
    share_token = models.CharField(max_length=64, blank=True, editable=False)
    shared_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["share_token"],
                condition=~Q(share_token=""),
                name="conversation_share_token_unique",
            )
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.id}"

    @property
    def has_thread(self) -> bool:
        return bool(self.thread_id)

    @property
    def is_shared(self) -> bool:
        return bool(self.share_token)


# Told with a reply the model stopped at its length limit: Continue asks it to go on.
REPLY_CUT_NOTICE = "The reply reached the assistant's length limit, so it stops here."


class Run(models.Model):
    class Mode(models.TextChoices):
        THREAD = "thread", "thread (remembered)"
        STATELESS = "stateless", "stateless"

    class Status(models.TextChoices):
        PENDING = "pending"
        STREAMING = "streaming"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        FAILED = "failed"

    ACTIVE_STATUSES = (Status.PENDING, Status.STREAMING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed with started_at below: the rate limit counts an owner's runs of the last minute.
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="runs", db_index=False
    )
    backend_run_id = models.CharField(max_length=64, blank=True)
    thread_id = models.CharField(max_length=64, blank=True)
    mode = models.CharField(max_length=16, choices=Mode.choices)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    error_code = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    reply_chars = models.PositiveIntegerField(default=0)
    # Kept every few seconds while streaming (never per token) by the process relaying the run,
    # so a crash loses at most those seconds and a sweeper can tell the relay is gone.
    partial_text = models.TextField(blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The channel-layer channel of the process relaying the run: other processes send it
    # cancels and ask it for the reply so far.
    relay_channel = models.CharField(max_length=200, blank=True)
    # Told to the user with the reply, e.g. that the old memory was gone and a new one began.
    notice = models.CharField(max_length=300, blank=True)
    # A regeneration's: the backend runs whose memory it takes out of that thread before it
    # asks. Kept, so that asking again after it failed still does (see services).
    rewind_thread_id = models.CharField(max_length=64, blank=True)
    rewind_run_ids = models.JSONField(default=list, blank=True)
    # A continuation's: the reply cut at the length limit that it goes on with. Its text is
    # added to that reply, which then names this run.
    continues = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["conversation", "started_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(mode__in=["thread", "stateless"]), name="run_mode_valid"
            )
        ]

    def __str__(self) -> str:
        return f"Run {self.id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def reply_cut(self) -> bool:
        """Completed, but cut at the model's length limit: the reply can be continued."""
        return self.status == self.Status.COMPLETED and REPLY_CUT_NOTICE in self.notice

    @property
    def time_to_first_token(self):
        if self.first_token_at is None:
            return None
        return self.first_token_at - self.started_at

    @property
    def duration(self):
        if self.finished_at is None:
            return None
        return self.finished_at - self.started_at


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Feedback(models.TextChoices):
        GOOD = "good"
        BAD = "bad"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    text = models.TextField()
    remembered = models.BooleanField(
        default=False, help_text="Sent to the backend thread, so the assistant remembers it."
    )
    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # A reply the user asked to regenerate: kept for review, left out of the transcript.
    replaced_at = models.DateTimeField(null=True, blank=True)
    # How the user rated a reply, for staff reviewing the assistant: good, bad, or not rated.
    feedback = models.CharField(max_length=8, choices=Feedback.choices, blank=True)
    feedback_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["conversation", "created_at"])]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:60]}"
