"""One exception hierarchy: every error a user can meet says what went wrong and what to do."""


class ParallelRunError(Exception):
    """Base of every error parallelrun raises on purpose; the CLI prints its message on one line."""


class SettingsError(ParallelRunError):
    """A run setting has a value that is not allowed; raised at submit, never inside a worker."""

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"setting {setting}={value!r} is not allowed: {allowed}")


class NotFoundError(ParallelRunError):
    """A model, endpoint, job or stack that was named does not exist."""


class ConflictError(ParallelRunError):
    """The request clashes with the current state (for example an output that already exists)."""


class InputError(ParallelRunError):
    """An input pointer or input file cannot be used."""


class InputTooLarge(InputError):
    """An input would take more memory to read than a worker can spare (a gzip bomb, a giant line)."""


class UnsafeKey(InputError):
    """An S3 key (or a name in a zip or a setting) that cannot safely name a local file:
    absolute, empty, '.'/'..' segments, a backslash or NUL, or leading outside its folder."""


class EnvironmentBuildError(InputError):
    """A deployment's requirements could not be installed (the message names the package)."""


class IntegrityError(ParallelRunError):
    """Scoring code or a model file on local disk does not match the SHA-256 it was stored with."""


class ScoringScriptError(ParallelRunError):
    """The user's scoring script could not be loaded or broke its contract."""


class StackError(ParallelRunError):
    """The stack (local or on AWS) cannot be reached or is missing something."""


class ExpressionError(ParallelRunError):
    """A schedule expression (``rate(...)`` or ``cron(...)``) that EventBridge would refuse or that never fires."""


class AzureOnlyError(ParallelRunError):
    """An Azure ML call an entry script made that needs Azure itself (a workspace by its ids, a
    dataset or datastore by name): raised at the call, naming it and what to use instead."""

    def __init__(self, call: str, instead: str) -> None:
        self.call, self.instead = call, instead
        super().__init__(f"{call} needs Azure ML itself, which a parallelrun job does not reach: {instead}")

    def __reduce__(self) -> tuple:  # crosses the scoring process's pipe as itself
        return type(self), (self.call, self.instead)
