"""The retrain policies' scheduler: what each policy says now, and the jobs that are due.

Celery beat (one per deployment) sends the policy task every ``POETS_POLICY_CHECK_S``; the
task calls :func:`run_due`, which holds a claim in the job store while it decides, so that
overlapping ticks or a second scheduler by mistake cannot start a job twice. A due policy's
job is submitted like any other (:func:`poets.engine.jobs.submit.submit`, trigger ``policy``)
on a frozen snapshot of its dataset.
"""

import logging
import os
import time
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from poets.engine.errors import PoetsError
from poets.engine.jobs.submit import JobRequest, Send, submit
from poets.engine.policies import Policy, Situation, due
from poets.engine.promotion import read_record
from poets.engine.workspace import Workspace

log = logging.getLogger(__name__)

CLAIM = "policy-scheduler"


def _created(meta: Dict[str, Any]) -> Optional[float]:
    """``poets.json``'s ``created`` (``datetime.isoformat()`` in UTC) as a UNIX time.

    Parsed by hand: ``datetime.fromisoformat`` is Python 3.7+, and 3.6's ``%z`` takes no colon.
    """
    text = str(meta.get("created") or "")
    if text[-3:-2] == ":" and text[-6:-5] in "+-":
        text = text[:-3] + text[-2:]
    for form in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return datetime.strptime(text, form).timestamp()
        except ValueError:
            continue
    return None


def situation(workspace: Workspace, name: str, policy: Policy, now: Optional[float] = None) -> Situation:
    """What :func:`poets.engine.policies.due` needs, read now from the library, store and jobs."""
    library, store, jobs = workspace.datasets, workspace.store, workspace.jobs
    described = library.describe(policy.dataset)
    # The newest version, current or held: a held retrain must not start again on every tick.
    versions = store.versions(name)
    newest = versions[-1] if versions else None
    trained_on: Optional[List[str]] = None
    fingerprint = trained_at = None
    if newest is not None:
        record = read_record(store.path(name, newest)) or {}
        trained_on = list(record.get("dataset_images") or [])
        meta = store.metadata(name, newest)
        fingerprint = (meta.get("dataset") or {}).get("fingerprint")
        trained_at = _created(meta)
    return Situation(
        now=time.time() if now is None else now,
        images=library.image_names(policy.dataset),
        fingerprint=described.get("fingerprint"),
        trained_on=trained_on,
        trained_fingerprint=fingerprint,
        trained_at=trained_at,
        last_policy_job=jobs.last_created(name, "policy"),
        busy=jobs.active(name),
    )


def status(workspace: Workspace, name: str, policy: Policy) -> Dict[str, Any]:
    """The policy with ``due``, ``reason``, ``new_images`` and ``next_due`` (ISO time or None)."""
    try:
        answer = due(policy, situation(workspace, name, policy))
    except PoetsError as exc:  # the dataset was deleted: the policy waits, and says why
        answer = {"due": False, "reason": exc.detail, "new_images": 0, "next_due": None}
    when = answer.get("next_due")
    answer["next_due"] = datetime.fromtimestamp(when).astimezone().isoformat() if when else None
    return dict(policy.to_dict(), **answer)


def run_due(workspace: Workspace, send: Send, holder: Optional[str] = None) -> List[Tuple[str, str]]:
    """Submit a job for every due policy; returns (model, job id) of each. Never raises for one
    policy's trouble: it is logged and the others go on."""
    holder = holder or "{}:{}".format(os.uname()[1], os.getpid())
    jobs = workspace.jobs
    if not jobs.claim(CLAIM, holder, ttl_s=max(60.0, 4 * workspace.settings.policy_check_s)):
        log.info("another scheduler is deciding; skipping this tick")
        return []
    started: List[Tuple[str, str]] = []
    try:
        for name, policy in workspace.policies.all().items():
            try:
                answer = due(policy, situation(workspace, name, policy))
                if not answer["due"]:
                    continue
                request = JobRequest(dict(policy.params), name, dataset=policy.dataset, trigger="policy")
                job = submit(workspace, request, send)
                log.info("policy of %s started job %s: %s", name, job.id, answer["reason"])
                started.append((name, job.id))
            except PoetsError as exc:
                log.warning("policy of %s could not start a job: %s", name, exc.detail)
            except Exception:
                log.exception("policy of %s failed", name)
    finally:
        jobs.release(CLAIM, holder)
    return started
