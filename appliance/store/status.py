"""The one status set of every job record — imports, training runs, evaluations and exports.

Lifecycle: queued → running → completed | failed | stopped | interrupted. Which kind uses which:
- all four: queued, running, completed, failed;
- training runs also start `created` (never run), end `stopped` (asked to) or `interrupted`
  (their process died; resumable);
- imports may be `cancelling` (asked to stop while running) and end `cancelled`.
The values are the strings stored in the database and sent in JSON.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    CREATED = "created"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


# Work that holds resources or a place in a queue: it blocks deletion, and start-up recovers it.
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# Training runs whose checkpoints an evaluation, an export or "try one image" can use.
EVALUABLE = (JobStatus.COMPLETED, JobStatus.STOPPED, JobStatus.INTERRUPTED)
