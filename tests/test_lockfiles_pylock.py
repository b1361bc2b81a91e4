"""PEP 751 pylock.toml: wheels with hashes, markers, and errors that name file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import ManifestError
from runner.lockfiles import load_lockfile, select_for_environment

from experiments import LINUX_311

FIXTURES = Path(__file__).parent / "fixtures" / "lockfiles"
H = "c" * 64


def write(tmp_path: Path, text: str, name: str = "pylock.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path: Path) -> str:
    with pytest.raises(ManifestError) as info:
        load_lockfile(path)
    assert info.value.exit_code == 2 and "\n" not in info.value.message
    return info.value.message


def test_uv_exported_pylock_parses():
    lock = load_lockfile(FIXTURES / "pylock.toml")
    assert lock.format == "pylock"
    got = {p.name: (p.version, p.line, p.marker) for p in lock.packages}
    assert got == {"attrs": ("23.2.0", 8, None), "colorama": ("0.4.6", 15, "sys_platform == 'win32'"),
                   "six": ("1.16.0", 23, None), "tomli": ("2.0.1", 30, "python_full_version < '3.11'")}
    six = next(p for p in lock.packages if p.name == "six")
    (wheel,) = six.artifacts
    assert wheel["filename"] == "six-1.16.0-py2.py3-none-any.whl" and wheel["url"].startswith("https://")
    assert wheel["hashes"] == {"sha256": "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"}
    assert six.requires_python == ">=3.9" and six.index == "https://pypi.org/simple"
    assert [p.name for p in select_for_environment(lock, LINUX_311)] == ["attrs", "six"]


def test_requires_python_is_checked_against_the_target(tmp_path):
    text = (FIXTURES / "pylock.toml").read_text().replace('requires-python = ">=3.9"', 'requires-python = ">=3.12"')
    lock = load_lockfile(write(tmp_path, text))
    with pytest.raises(ManifestError) as info:
        select_for_environment(lock, LINUX_311)
    assert "requires Python >=3.12" in info.value.message and "3.11.2" in info.value.message


def test_local_wheel_path_and_dependency_group_markers(tmp_path):
    path = write(tmp_path, f'''lock-version = "1.0"
default-groups = ["train"]
created-by = "hand"

[[packages]]
name = "demo"
version = "1.0"
marker = "'train' in dependency_groups"
wheels = [{{ path = "wheels/demo-1.0-py3-none-any.whl", hashes = {{ sha256 = "{H}" }} }}]

[[packages]]
name = "devtool"
version = "2.0"
marker = "'dev' in dependency_groups"

[[packages.wheels]]
url = "https://files.example/devtool-2.0-py3-none-any.whl"
hashes = {{ sha256 = "{H}" }}
''')
    lock = load_lockfile(path)
    demo, devtool = lock.packages
    # Relative to the lock's folder (fetched against it): no host path in image labels or attestations.
    assert demo.artifacts[0]["url"] == "wheels/demo-1.0-py3-none-any.whl"
    assert devtool.line == 12 and devtool.artifacts[0]["filename"] == "devtool-2.0-py3-none-any.whl"
    assert [p.name for p in select_for_environment(lock, LINUX_311)] == ["demo"]


HEAD = 'lock-version = "1.0"\ncreated-by = "test"\n\n'


@pytest.mark.parametrize("body, line, words", [
    ('[[packages]]\nname = "x"\nversion = "1"\n[packages.vcs]\ntype = "git"\nurl = "https://g/x"\n'
     'commit-id = "abc"\n', 7, ["VCS", "cannot be verified"]),
    ('[[packages]]\nname = "x"\n\n[packages.directory]\npath = "./x"\n', 7, ["local directory"]),
    ('[[packages]]\nname = "x"\nwheels = [{ url = "https://f/x-1-py3-none-any.whl", hashes = { sha256 = "'
     + H + '" } }]\n', 5, ["no version", "pinned"]),
    ('[[packages]]\nname = "x"\nversion = "1"\nwheels = [{ url = "https://f/x-1-py3-none-any.whl" }]\n', 7,
     ["no hashes"]),
    ('[[packages]]\nname = "x"\nversion = "1"\nsdist = { url = "https://f/x-1.tar.gz", hashes = { sha256 = "'
     + H + '" } }\n', 7, ["only an sdist"]),
    ('[[packages]]\nname = "x"\nversion = "1"\nwheels = [{ url = "https://f/y-1-py3-none-any.whl", hashes = '
     '{ sha256 = "' + H + '" } }]\n', 5, ["is for y"]),
    ('[[packages]]\nname = "x"\nversion = "1"\nmarker = "python_version >>> 3"\nwheels = []\n', 7,
     ["invalid environment marker"]),
    ('[[packages]]\nname = "x"\nversion = "1"\nwheels = [{ url = "https://f/x-1-py3-none-any.whl", hashes = '
     '{ sha256 = "abc" } }]\n', 7, ["not 64 hex"]),
])
def test_errors_name_the_file_and_line(tmp_path, body, line, words):
    path = write(tmp_path, HEAD + body)
    message = error(path)
    assert message.startswith(f"{path}:{line}: "), message
    for word in words:
        assert word in message, message


def test_syntax_error_and_unknown_lock_version(tmp_path):
    assert error(write(tmp_path, 'lock-version = "1.0"\n[[packages]\n')).startswith(f"{tmp_path / 'pylock.toml'}:2: ")
    assert "lock-version '2.0' is not supported" in error(write(tmp_path, 'lock-version = "2.0"\n'))
