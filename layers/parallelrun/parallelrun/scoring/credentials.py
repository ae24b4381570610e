"""Narrowed credentials for the user's scoring process.

The worker's role may write the table, every job's results and the queues; the user's script must
not inherit that. The scoring process instead gets credentials of the stack's scoring role
(``PARALLELRUN_SCORING_ROLE_ARN``) from STS AssumeRole with a *session policy* that allows only
reading what its deployment reads: its model's files and its side inputs. "The resulting
session's permissions are the intersection of the role's identity-based policy and the session
policies" (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_temp_control-access_assumerole.html),
so the scoring role's own policy is the ceiling and the session policy the scope.

The process never sees the worker's credentials: its environment holds none, and the SDK finds
its own through ``credential_process`` (a config file of its own), which reads a file the worker
rewrites before the credentials expire. Credentials from one role assuming another last at most
an hour ("role chaining",
https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_terms-and-concepts.html#iam-term-role-chaining),
and the SDK asks its ``credential_process`` again 15 minutes before they expire, so the worker
renews them when half an hour is left.

What this cannot do on Lambda: the scoring process runs as the worker's user. The worker makes
itself non-dumpable (:func:`protect_from_children`), so a script can read neither
``/proc/<worker>/environ`` (the worker's credentials) nor its memory; but it can read the
credential file of another deployment's scoring process in the same container.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing.connection
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parallelrun.core.errors import StackError

ROLE_VARIABLE = "PARALLELRUN_SCORING_ROLE_ARN"
DURATION = 3600  # seconds: the most a chained role session may last
RENEW_BEFORE = 1800  # seconds before expiry when the worker renews them
# Variables that would let the SDK find other credentials before credential_process.
_HIDDEN = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
           "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
           "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN")
_PR_SET_DUMPABLE = 4


def read_policy(uris: Iterable[str], partition: str = "aws") -> dict[str, Any]:
    """A session policy that allows reading each ``s3://`` URI: an object, or with a trailing
    ``/`` every object under that prefix and listing it. Nothing else is allowed."""
    objects, listings = [], {}
    for uri in sorted(set(uris)):
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[5:].partition("/")
        if key.endswith("/") or not key:
            objects.append(f"arn:{partition}:s3:::{bucket}/{key}*")
            listings.setdefault(bucket, []).append(f"{key}*")
        else:
            objects.append(f"arn:{partition}:s3:::{bucket}/{key}")
    statements: list[dict[str, Any]] = []
    if objects:
        statements.append({"Effect": "Allow", "Action": "s3:GetObject", "Resource": objects})
    statements += [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:{partition}:s3:::{bucket}",
                    "Condition": {"StringLike": {"s3:prefix": prefixes}}} for bucket, prefixes in sorted(listings.items())]
    if not statements:  # a session policy must grant something; this grants what AWS always allows
        statements.append({"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}


def role_arn() -> str:
    """The stack's scoring role, which the worker's environment names."""
    found = os.environ.get(ROLE_VARIABLE)
    if not found:
        raise StackError(f"{ROLE_VARIABLE} is not set: the worker needs the stack's scoring role to run a script")
    return found


# STS AssumeRole (role ARN, session name, duration, session policy) → its Credentials: the
# worker passes :func:`parallelrun.aws.control.assume_role`. Passed in, so this module imports no
# AWS client: it is also the credential_process the SDK runs, which should start fast.
AssumeRole = Callable[[str, str, int, str], dict[str, Any]]


def assume(assume_role: AssumeRole, policy: dict[str, Any], session_name: str) -> dict[str, Any]:
    """Credentials of the scoring role narrowed by ``policy``, in credential_process's format
    (https://docs.aws.amazon.com/sdkref/latest/guide/feature-process-credentials.html)."""
    found = assume_role(role_arn(), session_name[:64], DURATION, json.dumps(policy, separators=(",", ":")))
    expiration = found["Expiration"]
    if isinstance(expiration, datetime):
        expiration = expiration.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"Version": 1, "AccessKeyId": found["AccessKeyId"], "SecretAccessKey": found["SecretAccessKey"],
            "SessionToken": found["SessionToken"], "Expiration": expiration}


class ScopedCredentials:
    """The scoring process's credentials on disk, in a folder of its own, renewed while it runs."""

    def __init__(self, assume_role: AssumeRole, policy: dict[str, Any], session_name: str, folder: Path) -> None:
        self.assume_role, self.policy, self.session_name = assume_role, policy, session_name
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = folder / "credentials.json"
        self.config = folder / "config"
        self.expires = 0.0
        self.renew()
        command = shlex.join([sys.executable, "-m", "parallelrun.scoring.credentials", str(self.path)])
        self.config.write_text(f"[default]\ncredential_process = {command}\n")

    def renew(self) -> None:
        found = assume(self.assume_role, self.policy, self.session_name)
        self.expires = datetime.strptime(found["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(found))
        staging.chmod(0o600)
        staging.replace(self.path)  # the SDK never reads half a file

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """This process's environment as the scoring process must inherit it, while a child is
        started (a spawned child takes the environment of the moment): none of the worker's
        credentials, and an SDK config whose ``credential_process`` prints the current ones."""
        saved = {name: os.environ.pop(name) for name in _HIDDEN if name in os.environ}
        for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            saved.setdefault(name, os.environ.get(name))  # type: ignore[arg-type]
        os.environ.update(AWS_CONFIG_FILE=str(self.config), AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def keep_fresh(self, sentinel: int) -> threading.Thread:
        """Renew the credentials :data:`RENEW_BEFORE` seconds before they expire until the child
        whose ``sentinel`` (multiprocessing's) this is has ended; then remove them."""

        def loop() -> None:
            try:
                while True:
                    wait = self.expires - RENEW_BEFORE - time.time()
                    if wait <= 0:
                        try:
                            self.renew()
                            continue
                        except Exception:  # STS unreachable for a moment: the old ones last a while yet
                            wait = 30
                    if multiprocessing.connection.wait([sentinel], timeout=wait):
                        return  # the child ended
            except OSError:  # its sentinel was closed: it ended too
                return
            finally:
                for path in (self.path, self.config):
                    path.unlink(missing_ok=True)

        thread = threading.Thread(target=loop, name="scoring-credentials", daemon=True)
        thread.start()
        return thread


def protect_from_children() -> None:
    """Make this process non-dumpable, so that a process of the same user (the user's script)
    cannot read its ``/proc/<pid>/environ`` or memory, which hold the worker's credentials
    (prctl(2), PR_SET_DUMPABLE; proc(5) on the ptrace access check). Linux only; elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


if __name__ == "__main__":  # credential_process: print the current credentials
    sys.stdout.write(Path(sys.argv[1]).read_text())
