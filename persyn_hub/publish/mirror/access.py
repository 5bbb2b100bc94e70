"""Can a run resume from this repo? `check_resume_source` reads the repo's head at the revision asked for
before any stage starts, and a repo or revision that cannot be read stops the run with one line naming
the repo, the revision, the reason and the fix (exit 2), instead of a run that quietly computes every stage.

A dead or hanging endpoint fails within a minute: each try waits at most `RESUME_TIMEOUT` seconds for an
answer, and a transient failure (connection refused, timeout, 429, 5xx) is tried again only while less
than `RESUME_DEADLINE` seconds have passed (a refused connection: about 15 s; a silent one: about 33 s).
"""

from __future__ import annotations

from typing import Any

from persyn_hub.errors import PersynError
from persyn_hub.publish.mirror.layout import describe
from persyn_hub.publish.scrub import scrub_url

RESUME_TIMEOUT = 10.0
"""Seconds one read of the repo waits for an answer."""
RESUME_DEADLINE = 30.0
"""Seconds after which no further try starts."""
FIELD = "output.hub.resume_from (--resume-from-hub)"


class ResumeSourceError(PersynError, RuntimeError):
    """The repo a run was asked to resume from cannot be read."""


def _endpoint(api: Any) -> str:

    return scrub_url(str(getattr(api, "endpoint", "") or ""))


def reason_and_fix(error: BaseException, api: Any, repo_id: str, revision: str | None) -> tuple[str, str]:
    """Why a read of the repo failed, and what to do, for the one-line error."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    # lazy: publish.client loads huggingface_hub, which this module otherwise does not
    from persyn_hub.publish.client import is_transport_error, status_of

    status = status_of(error)
    if isinstance(error, RevisionNotFoundError):
        return (
            f"the repo has no revision {revision!r}",
            f"name an existing branch, tag or commit sha ({repo_id}@main), or drop the @revision",
        )
    if isinstance(error, RepositoryNotFoundError) or status == 404:  # the Hub's 401 for a repo it hides too
        return (
            "the repo does not exist, or it is private and this token cannot see it",
            "check the repo id (the run's output.hub.stages_repo) and log in with a token that can read it "
            "(HF_TOKEN or `hf auth login`)",
        )
    if status == 401:
        return (
            "the Hub refused the token (401)",
            "set HF_TOKEN to a valid token with read access (or run `hf auth login`)",
        )
    if status == 403:
        return (
            "this token may not read the repo (403)",
            "use a token with read access to it (a fine-grained token needs this repo in its read scope), "
            "or request access",
        )
    if is_transport_error(error) or status is None:
        return (
            f"the Hub endpoint {_endpoint(api)} did not answer ({describe(error)})",
            "check HF_ENDPOINT and the network, or run without --resume-from-hub to compute every stage here",
        )
    return (
        f"the Hub answered {describe(error)}",
        "try again later, or run without --resume-from-hub to compute every stage here",
    )


def resume_error(error: BaseException, api: Any, repo_id: str, revision: str | None) -> ResumeSourceError:
    reason, fix = reason_and_fix(error, api, repo_id, revision)
    return ResumeSourceError(
        f"{FIELD}: cannot read dataset repo {repo_id!r} at revision {revision or 'main'!r}: {reason}. "
        f"Fix: {fix}."
    )


def check_resume_source(api: Any, repo_id: str, revision: str | None) -> str:
    """The commit sha the repo's `revision` points at; `ResumeSourceError` when it cannot be read."""
    # lazy: publish.client loads huggingface_hub, which this module otherwise does not
    from persyn_hub.publish.client import with_retries

    try:
        info = with_retries(
            lambda: api.dataset_info(repo_id, revision=revision, timeout=RESUME_TIMEOUT),
            f"read {repo_id}",
            traffic=getattr(api, "traffic", None),
            deadline=RESUME_DEADLINE,
        )
    except Exception as error:  # noqa: BLE001 - every failure is named in the one line
        raise resume_error(error, api, repo_id, revision) from None
    return str(info.sha)


__all__ = ["RESUME_DEADLINE", "RESUME_TIMEOUT", "ResumeSourceError", "check_resume_source", "resume_error"]
