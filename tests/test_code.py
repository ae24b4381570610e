"""The scoring code on local disk (scoring.code), without a stack: a zip unpacked whole, and
every later change to the unpacked files refused before anything is imported."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from parallelrun.core.errors import IntegrityError, UnsafeKey
from parallelrun.scoring import code


def bundle(files: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue(), {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_an_unpacked_bundle_is_read_only_and_passes_its_check(tmp_path):
    data, manifest = bundle({"score.py": b"def run(b):\n    return b\n", "lib/helper.py": b"X = 1\n"})
    target = tmp_path / "sha"
    code._unpack(data, target)
    assert (target / "lib" / "helper.py").read_bytes() == b"X = 1\n"
    assert not (target / "score.py").stat().st_mode & 0o222
    assert list(tmp_path.iterdir()) == [target]  # no staging folder left behind
    code._check_unpacked("sha", target, manifest)


@pytest.mark.parametrize("change, found", [
    (lambda t: (t / "score.py").unlink(), "score.py is missing"),
    (lambda t: (t / "pandas.py").write_text("planted"), "pandas.py has SHA-256"),
    (lambda t: (t / "lib" / "link.py").symlink_to(t / "score.py"), "lib/link.py is a symbolic link"),
])
def test_a_changed_bundle_is_refused_and_removed(tmp_path, change, found):
    data, manifest = bundle({"score.py": b"def run(b):\n    return b\n", "lib/helper.py": b"X = 1\n"})
    target = tmp_path / "sha"
    code._unpack(data, target)
    (target / "lib").chmod(0o755)
    target.chmod(0o755)
    change(target)
    with pytest.raises(IntegrityError, match=found):
        code._check_unpacked("sha", target, manifest)
    assert not target.exists()  # the next attempt unpacks the zip again


def test_a_member_named_outside_the_folder_is_refused(tmp_path):
    data, _ = bundle({"../escaped.py": b"x"})
    with pytest.raises(UnsafeKey):
        code._unpack(data, tmp_path / "sha")
    assert not (tmp_path / "escaped.py").exists()
