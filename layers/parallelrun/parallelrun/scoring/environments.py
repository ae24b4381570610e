"""A deployment's own Python environment: built once per requirements hash, and the scoring
process started in it; and the same requirements built as a Lambda layer for AWS.

Locally (the local stack's workers, or a stack worker handed such a deployment) the environment
is a virtual environment under the worker's cache folder (``core.safepath.ENVS``), named by the
requirements' id (``core.environments.environment_id``). One file lock per id makes it be built
once, however many worker processes ask at the same time; it is built in a temporary folder and
renamed into place, so a folder under its id is always complete (a build that died leaves none).
pip installs into it with ``--only-binary=:all:`` as the Lambda layer's build must, so what
installs locally installs for Lambda too.

The environment's packages win over the worker's, while ``parallelrun`` and its dependencies
stay importable: a ``.pth`` file in the environment's site-packages adds the worker's own paths
after the environment's (written after pip ran, so pip resolves against the environment alone and
never touches the worker's packages). The scoring process is spawned with the environment's
interpreter, entering through :func:`parallelrun.scoring.envstart.enter`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import multiprocessing.spawn
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import venv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from parallelrun.aws import workers
from parallelrun.aws.config import StackConfig
from parallelrun.aws.workers import ENVIRONMENT_VAR
from parallelrun.core import safepath
from parallelrun.core.environments import LAMBDA_PLATFORM, PYTHON_VERSION, environment_id, failed_package, pip_error
from parallelrun.core.errors import ConflictError, EnvironmentBuildError
from parallelrun.store import endpoints

_PTH = "_parallelrun_worker.pth"
# multiprocessing's interpreter for spawn is one global: every scoring process starts under this
# lock, so one host's environment is never given to another's process.
_spawn_lock = threading.Lock()


@dataclass(frozen=True)
class Environment:
    id: str
    root: Path
    built: bool  # this call built it (else it was there, made by an earlier call or another process)

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return _site_packages(self.root)


def _site_packages(root: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))


def needed(requirements: Sequence[str]) -> bool:
    """Whether a deployment with these requirements needs an environment built here: not when it
    has none, nor inside its own Lambda worker (whose layer is its environment), nor when this
    interpreter's own packages already meet every line (an Azure conda file listing what the
    worker has, say: a build would only install copies)."""
    return (bool(requirements) and os.environ.get(ENVIRONMENT_VAR) != environment_id(requirements)
            and not met_here(requirements))


def met_here(requirements: Sequence[str]) -> bool:
    """Whether the packages installed beside parallelrun meet every requirement line; False when
    that cannot be told (no ``packaging`` to read the lines, or extras, which pull in more)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return False
    for line in requirements:
        wanted = Requirement(line)
        if wanted.marker is not None and not wanted.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(wanted.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if wanted.extras or not wanted.specifier.contains(version, prereleases=True):
            return False
    return True


def ensure(requirements: Sequence[str]) -> Environment:
    """The environment for ``requirements``, built now unless it exists (see the module doc);
    :class:`EnvironmentBuildError` names the package pip could not install."""
    env_id = environment_id(requirements)
    root = safepath.ENVS / env_id
    safepath.ENVS.mkdir(parents=True, exist_ok=True)
    with open(safepath.ENVS / f"{env_id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also by a process that dies
        if root.is_dir():
            return Environment(env_id, root, built=False)
        building = Path(tempfile.mkdtemp(prefix=f".{env_id}-", dir=safepath.ENVS))
        try:
            venv.EnvBuilder(with_pip=False, symlinks=True).create(building)
            pip_install(requirements, general=["--python", str(building / "bin" / "python")])
            _worker_paths_after(_site_packages(building))
            building.rename(root)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return Environment(env_id, root, built=True)


def pip_install(requirements: Sequence[str], general: Sequence[str] = (), install: Sequence[str] = ()) -> None:
    """``pip [general] install [install]`` of the requirements (each one argument, never read as
    an option), wheels only; a failure names the package pip could not install."""
    command = [sys.executable, "-m", "pip", *general, "install", *install, "--no-input",
               "--disable-pip-version-check", "--no-warn-script-location", "--only-binary=:all:", *requirements]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode:
        package = failed_package(done.stdout)
        what = f"requirement {package!r}" if package else f"the requirements {list(requirements)}"
        raise EnvironmentBuildError(f"{what} could not be installed: {pip_error(done.stdout)}")


def _worker_paths_after(site_packages: Path) -> None:
    """The worker's own import paths, after the environment's: each through ``site.addsitedir``,
    so the ``.pth`` files there (an editable install's, say) work as in the worker."""
    stdlib = sysconfig.get_path("stdlib")  # the environment has the same one (the same base interpreter)
    paths = [p for p in sys.path if p and not p.endswith(".zip") and p != stdlib and not p.startswith(stdlib + os.sep)]
    lines = [f"import site; site.addsitedir({path!r})" for path in dict.fromkeys(paths)]
    (site_packages / _PTH).write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def starting(environment: Environment | None) -> Iterator[None]:
    """Around a scoring process's ``start()``: spawn runs the environment's interpreter (or the
    worker's own for None), and no other process starts meanwhile."""
    with _spawn_lock:
        previous = multiprocessing.spawn.get_executable()
        if environment is not None:
            multiprocessing.spawn.set_executable(str(environment.python))
        try:
            yield
        finally:
            multiprocessing.spawn.set_executable(previous)


def build_layer(requirements: Sequence[str], out: Path) -> Path:
    """The requirements as a Lambda layer zip at ``out``: installed with pip for Lambda's platform
    and Python into ``python/``, the folder Lambda puts on the path
    (https://docs.aws.amazon.com/lambda/latest/dg/packaging-layers.html), zipped as code bundles
    are (the same requirements, the same bytes)."""
    with tempfile.TemporaryDirectory(prefix="parallelrun-layer-") as folder:
        pip_install(requirements, install=["--target", str(Path(folder) / "python"), "--platform", LAMBDA_PLATFORM,
                                           "--python-version", PYTHON_VERSION, "--implementation", "cp"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(endpoints.bundle(Path(folder)))
    return out


def make_worker(cfg: StackConfig, endpoint: str, deployment: str, requirements: Sequence[str]) -> str:
    """On a deployed stack, the deployment's own worker from a layer of its requirements
    (:mod:`parallelrun.aws.workers`); returns its batch queue's URL."""
    with tempfile.TemporaryDirectory(prefix="parallelrun-worker-") as folder:
        layer = build_layer(requirements, Path(folder) / "layer.zip")
        return workers.create(cfg, workers.worker_name(cfg, endpoint, deployment), layer,
                              environment_id(requirements))


def remove_worker(queue_url: str) -> None:
    """Remove the deployment's own worker whose batch queue is ``queue_url``, refused while the
    queue still holds mini-batches (a running job's, which would be lost with it)."""
    if workers.queue_holds_messages(queue_url):
        raise ConflictError("the deployment's own worker is still scoring mini-batches: wait for its jobs to end "
                            "(or cancel them), then delete it")
    workers.delete(queue_url.rstrip("/").rsplit("/", 1)[-1])  # the queue is named as its worker
