"""pip requirements locks: --hash on every line, continuation lines, errors that name file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import LINUX_311
from runner.errors import ManifestError
from runner.lockfiles import detect_format, load_lockfile, select_for_environment

FIXTURES = Path(__file__).parent / "fixtures" / "lockfiles"
H1 = "a" * 64
H2 = "b" * 64


def write(tmp_path: Path, text: str, name: str = "requirements.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path: Path, fmt: str | None = None) -> str:
    with pytest.raises(ManifestError) as info:
        load_lockfile(path, fmt)
    assert info.value.exit_code == 2
    assert "\n" not in info.value.message
    return info.value.message


def test_uv_pip_compile_output_parses_with_continuations_and_comments():
    lock = load_lockfile(FIXTURES / "requirements.txt")
    assert lock.format == "requirements" and len(lock.sha256) == 64
    got = {p.name: (p.version, p.line, p.marker, len(p.hashes)) for p in lock.packages}
    assert got == {
        "attrs": ("23.2.0", 3, None, 2),
        "colorama": ("0.4.6", 7, 'sys_platform == "win32"', 2),
        "six": ("1.16.0", 11, None, 2),
        "tomli": ("2.0.1", 15, 'python_full_version < "3.11"', 2),
    }
    six = next(p for p in lock.packages if p.name == "six")
    assert "sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254" in six.hashes
    assert six.source.endswith("requirements.txt:11") and six.index == "https://pypi.org/simple"


def test_markers_are_evaluated_for_the_target_not_the_host():
    lock = load_lockfile(FIXTURES / "requirements.txt")
    assert [p.name for p in select_for_environment(lock, LINUX_311)] == ["attrs", "six"]
    old_windows = {**LINUX_311, "python_full_version": "3.10.4", "python_version": "3.10", "sys_platform": "win32"}
    assert [p.name for p in select_for_environment(lock, old_windows)] == ["attrs", "colorama", "six", "tomli"]


def test_index_url_option_names_and_normalises(tmp_path):
    path = write(tmp_path, f"--index-url https://mirror.example/simple/\n--extra-index-url=https://extra.example/simple\n"
                           f"Foo_Bar[extra]==1.0 --hash=sha256:{H1}\n")
    (pkg,) = load_lockfile(path).packages
    assert pkg.name == "foo-bar" and pkg.index == "https://mirror.example/simple https://extra.example/simple"


def test_hash_on_the_following_lines_and_uppercase_hex(tmp_path):
    path = write(tmp_path, f"six==1.16.0 \\\n  --hash sha256:{H1.upper()} \\\n  --hash=sha256:{H2}  # the wheel\n")
    (pkg,) = load_lockfile(path).packages
    assert pkg.hashes == (f"sha256:{H1}", f"sha256:{H2}")


def test_direct_wheel_url_with_hash_is_accepted(tmp_path):
    url = "https://files.example/six-1.16.0-py2.py3-none-any.whl"
    path = write(tmp_path, f"six @ {url}#sha256={H1}\n")
    (pkg,) = load_lockfile(path).packages
    assert (pkg.version, pkg.url, pkg.artifacts[0]["hashes"]) == ("1.16.0", url, {"sha256": H1})


def test_local_wheel_path_is_kept_relative_to_the_lock_folder(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "six-1.16.0-py2.py3-none-any.whl").write_bytes(b"x")
    path = write(tmp_path, f"./wheels/six-1.16.0-py2.py3-none-any.whl --hash=sha256:{H1}\n"
                 f"six @ file://{tmp_path}/wheels/six-1.16.0-py2.py3-none-any.whl --hash=sha256:{H1}\n")
    for pkg in load_lockfile(path).packages:
        assert pkg.artifacts[0]["url"] == "wheels/six-1.16.0-py2.py3-none-any.whl"


@pytest.mark.parametrize("line, words", [
    (f"./wheels/six-1.16.0-py2.py3-none-any.whl --hash=sha256:{H1}\n", ["no such file", "fix the lock line"]),
    (f"../six-1.16.0-py2.py3-none-any.whl --hash=sha256:{H1}\n", ["outside the lockfile's folder", "./wheels/"]),
    (f"/opt/six-1.16.0-py2.py3-none-any.whl --hash=sha256:{H1}\n", ["outside the lockfile's folder"]),
    (f"six @ file:///opt/six-1.16.0-py2.py3-none-any.whl --hash=sha256:{H1}\n", ["outside the lockfile's folder"]),
])
def test_unusable_local_wheel_names_the_line(tmp_path, line, words):
    lock = tmp_path / "lock"
    lock.mkdir()
    path = write(lock, line)
    with pytest.raises(ManifestError) as info:
        load_lockfile(path)
    assert info.value.exit_code == 2 and f"{path}:1:" in info.value.message
    assert all(w in info.value.message for w in words), info.value.message


@pytest.mark.parametrize("text, line, words", [
    ("six==1.16.0\n", 1, ["six==1.16.0", "no --hash", "--generate-hashes"]),
    (f"# c\n\nsix>=1.16 --hash=sha256:{H1}\n", 3, ["not pinned", ">=1.16"]),
    (f"six --hash=sha256:{H1}\n", 1, ["not pinned"]),
    (f"six==1.* --hash=sha256:{H1}\n", 1, ["not pinned"]),
    ("six @ git+https://github.com/benjaminp/six@1.16.0\n", 1, ["VCS", "cannot be verified"]),
    ("six @ https://files.example/six-1.16.0-py2.py3-none-any.whl\n", 1, ["URL requirement has no hash"]),
    (f"six @ https://files.example/six-1.16.0.tar.gz --hash=sha256:{H1}\n", 1, ["does not name a wheel"]),
    ("-e ./mypkg\n", 1, ["editable"]),
    ("-r base.txt\n", 1, ["included file"]),
    ("--find-links ./wheels\n", 1, ["--find-links"]),
    ("six==1.16.0 --hash=sha256:abc\n", 1, ["not 64 hex"]),
    (f"six==1.16.0 --hash=crc32:{H1}\n", 1, ["crc32", "not supported"]),
    (f"six==1.16.0 --hash={H1}\n", 1, ["not ALGO:HEX"]),
    (f"ok==1.0 --hash=sha256:{H1}\nbad name==1.0 --hash=sha256:{H1}\n", 2, ["cannot parse"]),
])
def test_errors_name_the_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    message = error(path)
    assert message.startswith(f"{path}:{line}: "), message
    for word in words:
        assert word in message, message


def test_continuation_error_names_the_first_line_of_the_requirement(tmp_path):
    path = write(tmp_path, f"six==1.16.0 --hash=sha256:{H1}\nattrs>=23 \\\n    --hash=sha256:{H2}\n")
    assert error(path).startswith(f"{path}:2: ")


def test_format_detection_by_file_name():
    assert detect_format(Path("requirements.lock")) == "requirements"
    assert detect_format(Path("reqs.txt")) == "requirements"
    assert detect_format(Path("pylock.toml")) == "pylock"
    assert detect_format(Path("pylock.train.toml")) == "pylock"
    assert detect_format(Path("uv.lock")) == "uv"


def test_missing_lockfile_and_unknown_format(tmp_path):
    assert "no such lockfile" in error(tmp_path / "nope.txt")
    assert "unknown lockfile format" in error(write(tmp_path, ""), "poetry")


def test_empty_lock_is_valid_and_has_no_packages(tmp_path):
    assert load_lockfile(write(tmp_path, "# nothing\n")).packages == ()


def test_overlapping_markers_for_the_same_package_are_refused(tmp_path):
    path = write(tmp_path, f"six==1.16.0 ; python_version >= '3.8' --hash=sha256:{H1}\n"
                           f"six==1.15.0 ; python_version >= '3.10' --hash=sha256:{H2}\n")
    lock = load_lockfile(path)
    with pytest.raises(ManifestError) as info:
        select_for_environment(lock, LINUX_311)
    assert f"{path}:2" in info.value.message and "locked twice" in info.value.message
    py39 = {**LINUX_311, "python_full_version": "3.9.1", "python_version": "3.9"}
    assert [p.version for p in select_for_environment(lock, py39)] == ["1.16.0"]
