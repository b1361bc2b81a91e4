"""uv.lock: the dependency graph from the workspace members, extras, forks, dev groups, errors with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import ManifestError
from runner.lockfiles import load_lockfile, select_for_environment

from experiments import LINUX_311

FIXTURES = Path(__file__).parent / "fixtures" / "lockfiles"
H = "d" * 64


def wheel(name: str, version: str) -> str:
    return (f'wheels = [{{ url = "https://files.example/{name.replace("-", "_")}-{version}-py3-none-any.whl", '
            f'hash = "sha256:{H}", size = 1 }}]\n')


def pkg(name: str, version: str, deps: str = "", extra: str = "", source: str = 'registry = "https://pypi.org/simple"',
        wheels: bool = True) -> str:
    text = f'[[package]]\nname = "{name}"\nversion = "{version}"\nsource = {{ {source} }}\n'
    if deps:
        text += f"dependencies = [\n{deps}]\n"
    if wheels:
        text += wheel(name, version)
    if extra:
        text += extra
    return text + "\n"


GRAPH = ('version = 1\nrevision = 3\nrequires-python = ">=3.9"\n\n'
         + pkg("exp", "0.1.0", source='virtual = "."', wheels=False,
               deps='    { name = "requests", extra = ["socks"] },\n'
                    '    { name = "numpy", version = "1.26.4", source = { registry = "https://pypi.org/simple" }, '
                    'marker = "python_full_version < \'3.12\'" },\n'
                    '    { name = "numpy", version = "2.1.0", source = { registry = "https://pypi.org/simple" }, '
                    'marker = "python_full_version >= \'3.12\'" },\n',
               extra='[package.optional-dependencies]\nplot = [{ name = "cycler" }]\n\n'
                     '[package.dev-dependencies]\ndev = [{ name = "pytest" }]\n')
         + pkg("cycler", "0.12.1")
         + pkg("numpy", "1.26.4")
         + pkg("numpy", "2.1.0")
         + pkg("pysocks", "1.7.1")
         + pkg("pytest", "8.0.0", deps='    { name = "pluggy" },\n')
         + pkg("pluggy", "1.4.0")
         + pkg("requests", "2.31.0",
               deps='    { name = "urllib3" },\n    { name = "win-only", marker = "sys_platform == \'win32\'" },\n',
               extra='[package.optional-dependencies]\nsocks = [{ name = "pysocks" }]\n')
         + pkg("urllib3", "2.2.0")
         + pkg("win-only", "1.0"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "uv.lock"
    path.write_text(text)
    return path


def test_real_uv_lock_parses_and_follows_markers():
    lock = load_lockfile(FIXTURES / "uv" / "uv.lock")
    assert lock.format == "uv"
    # iniconfig is only in the dev group, cycler only behind the project's own extra: neither is wanted.
    assert sorted(p.name for p in lock.packages) == ["attrs", "colorama", "six", "tomli"]
    assert [p.name for p in select_for_environment(lock, LINUX_311)] == ["attrs", "six"]
    six = next(p for p in lock.packages if p.name == "six")
    assert six.line == 76 and six.artifacts[0]["hashes"] == {
        "sha256": "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"}


def test_graph_extras_forks_and_dev_groups(tmp_path):
    lock = load_lockfile(write(tmp_path, GRAPH))
    # dev-only packages (pytest, pluggy) and the project's own extras (cycler) drop out at parse time.
    assert sorted(p.key for p in lock.packages) == [
        "numpy==1.26.4", "numpy==2.1.0", "pysocks==1.7.1", "requests==2.31.0", "urllib3==2.2.0", "win-only==1.0"]
    got = [p.key for p in select_for_environment(lock, LINUX_311)]
    # The socks extra on the edge turns on pysocks; the fork picks numpy 1.26.4 for 3.11.
    assert got == ["numpy==1.26.4", "pysocks==1.7.1", "requests==2.31.0", "urllib3==2.2.0"]
    py312_win = {**LINUX_311, "python_full_version": "3.12.1", "python_version": "3.12", "sys_platform": "win32"}
    assert [p.key for p in select_for_environment(lock, py312_win)] == [
        "numpy==2.1.0", "pysocks==1.7.1", "requests==2.31.0", "urllib3==2.2.0", "win-only==1.0"]


def test_lock_without_a_project_installs_every_package(tmp_path):
    lock = load_lockfile(write(tmp_path, 'version = 1\n\n' + pkg("six", "1.16.0") + pkg("attrs", "23.2.0")))
    assert [p.name for p in select_for_environment(lock, LINUX_311)] == ["six", "attrs"]


def test_local_find_links_registry_and_path_wheels(tmp_path):
    text = ('version = 1\n\n'
            '[[package]]\nname = "a"\nversion = "1.0"\nsource = { registry = "wheels" }\n'
            f'wheels = [{{ path = "a-1.0-py3-none-any.whl", hash = "sha256:{H}" }}]\n\n'
            '[[package]]\nname = "b"\nversion = "2.0"\nsource = { path = "dist/b-2.0-py3-none-any.whl" }\n'
            f'wheels = [{{ filename = "b-2.0-py3-none-any.whl", hash = "sha256:{H}" }}]\n')
    a, b = load_lockfile(write(tmp_path, text)).packages
    assert a.artifacts[0]["url"] == str(tmp_path / "wheels" / "a-1.0-py3-none-any.whl")
    assert b.artifacts[0]["url"] == str(tmp_path / "dist" / "b-2.0-py3-none-any.whl")


@pytest.mark.parametrize("body, line, words", [
    (pkg("exp", "0.1", source='virtual = "."', wheels=False, deps='    { name = "x" },\n')
     + pkg("x", "1.0", source='git = "https://github.com/o/x?rev=1#abc"', wheels=False), 14, ["git dependency"]),
    (pkg("x", "1.0", wheels=False) .replace('source = { registry = "https://pypi.org/simple" }\n',
                                           'source = { registry = "https://pypi.org/simple" }\nsdist = { url = '
                                           f'"https://f/x-1.0.tar.gz", hash = "sha256:{H}" }}\n'), 7, ["sdist only"]),
    (pkg("x", "1.0").replace(f'hash = "sha256:{H}", ', ""), 4, ["no hash"]),
    (pkg("exp", "0.1", source='virtual = "."', wheels=False, deps='    { name = "ghost" },\n'), 4, ["not in the lock"]),
    (pkg("x", "1.0", source='directory = "../x"', wheels=False), 6, ["local source tree"]),
])
def test_errors_name_the_file_and_line(tmp_path, body, line, words):
    path = write(tmp_path, "version = 1\n\n" + body)
    with pytest.raises(ManifestError) as info:
        load_lockfile(path)
    message = info.value.message
    assert message.startswith(f"{path}:{line}: "), message
    for word in words:
        assert word in message, message


def test_unknown_version_is_refused(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_lockfile(write(tmp_path, "version = 2\n"))
    assert "version 2 is not supported" in info.value.message
