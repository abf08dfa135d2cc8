"""argvkey: the library that keeps the admin key off tritonserver's command line is built once into a private
folder, its absence is warned about, and a server it does not reach refuses to start rather than take the
placeholder for its key (the real bundled tritonserver; a running server's command line and stubs are checked in
test_server.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from generator.errors import ArtifactCorrupt
from generator.serve import argvkey
from generator.serve.adminapi import KEY_PLACEHOLDER, admin_credential, restriction_flags
from generator.serve.install import bundled_lib_dirs, find_install


def test_library_is_built_once_into_a_private_folder(tmp_path):
    env = {"PATH": os.environ["PATH"], "XDG_CACHE_HOME": str(tmp_path / "cache")}
    (tmp_path / "cache" / "tritongen").mkdir(parents=True, mode=0o755)
    built = argvkey.library(env)
    assert built is not None and built.parent == tmp_path / "cache" / "tritongen"
    assert built.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no temporary file left
    stamp = built.stat().st_mtime_ns
    assert argvkey.library(dict(env, PATH=str(tmp_path / "no-compiler"))) == built  # reused: no compiler needed
    assert built.stat().st_mtime_ns == stamp


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_cache_folder_of_another_user_is_refused(tmp_path):
    folder = tmp_path / "cache" / "tritongen"
    folder.mkdir(parents=True, mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(ArtifactCorrupt, match="not a folder of this user"):
        argvkey.library({"PATH": os.environ["PATH"], "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert list(folder.iterdir()) == []


def test_no_library_is_built_or_preloaded_from_a_folder_another_user_could_swap(tmp_path):
    """review14: XDG_CACHE_HOME in a folder others may write let another user swap the cache folder between the
    check of the library and the server's start: tritonserver preloaded their library, the admin key in its
    environment (38 starts in 41 of /tmp/review14/race/run.sh)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ArtifactCorrupt, match="another user could replace it"):
        argvkey.library({"PATH": os.environ["PATH"], "XDG_CACHE_HOME": str(shared)})
    assert list((shared / "tritongen").iterdir()) == []


_MARKING_LIBRARY = """#include <stdio.h>
__attribute__((constructor)) static void mark(void) { FILE *f = fopen(MARK, "w"); if (f) fclose(f); }
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_kept_library_another_user_could_write_is_never_loaded(tmp_path):
    """A cache folder that was once open to others is made private, but what another user put there meanwhile
    (the library's very name) is built over, not loaded into tritongen or the server."""
    folder = tmp_path / "cache" / "tritongen"
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    name = argvkey.library({"PATH": os.environ["PATH"], "XDG_CACHE_HOME": str(tmp_path / "a")}).name
    (tmp_path / "mark.c").write_text(_MARKING_LIBRARY)
    planted = folder / name
    subprocess.run(["cc", "-shared", "-fPIC", f"-DMARK=\"{tmp_path / 'marked'}\"", "-o", str(planted),
                    str(tmp_path / "mark.c")], check=True)
    os.chown(planted, 4242, 4242)
    built = argvkey.library({"PATH": os.environ["PATH"], "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert built == planted and not (tmp_path / "marked").exists()
    assert built.stat().st_uid == os.geteuid() and built.stat().st_mode & 0o777 == 0o700
    assert folder.stat().st_mode & 0o777 == 0o700


def test_no_compiler_warns_that_the_key_is_visible(tmp_path):
    env = {"PATH": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with pytest.warns(argvkey.KeyOnCommandLine, match=r"every local user can read it.*no C compiler.*install a C"):
        assert argvkey.library(env) is None


_JUNK_CC = """#!/bin/sh
while [ "$1" != "-o" ]; do shift; done
echo not a library > "$2"
"""
_HEADERLESS_CC = """#!/bin/sh
echo "argvkey.c:12:10: fatal error: stdio.h: No such file or directory" >&2
echo "compilation terminated." >&2
exit 1
"""


def _fake_cc(folder: Path, script: str) -> dict[str, str]:
    """The environment of a machine whose only compiler is ``script`` (and an empty cache)."""
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "cc").write_text(script)
    (folder / "bin" / "cc").chmod(0o755)
    return {"PATH": str(folder / "bin"), "XDG_CACHE_HOME": str(folder / "cache")}


def test_a_compiler_that_fails_leaves_the_key_visible_and_says_why(tmp_path):
    with pytest.warns(argvkey.KeyOnCommandLine, match="stdio.h: No such file"):
        assert argvkey.library(_fake_cc(tmp_path, _HEADERLESS_CC)) is None
    assert list((tmp_path / "cache" / "tritongen").iterdir()) == []


def test_a_library_that_does_not_load_is_built_again_or_warned_about(tmp_path):
    """A kept file that is no library is replaced; a compiler whose output does not load (as from a noexec
    mount) leaves the key on the command line, with the warning."""
    good = argvkey.library({"PATH": os.environ["PATH"], "XDG_CACHE_HOME": str(tmp_path / "a")})
    kept = tmp_path / "b" / "tritongen" / good.name
    kept.parent.mkdir(parents=True, mode=0o700)
    kept.write_text("not a library")
    assert argvkey.library({"PATH": os.environ["PATH"], "XDG_CACHE_HOME": str(tmp_path / "b")}) == kept
    assert kept.read_bytes()[:4] == b"\x7fELF"
    with pytest.warns(argvkey.KeyOnCommandLine, match="does not load"):
        assert argvkey.library(_fake_cc(tmp_path / "c", _JUNK_CC)) is None


def test_the_cli_prints_the_warning_as_a_warning_line(capsys):
    from generator.cli import _show_warning

    _show_warning(argvkey.KeyOnCommandLine("the key is visible"), argvkey.KeyOnCommandLine, "/x/argvkey.py", 7)
    assert capsys.readouterr().err == "warning: the key is visible\n"


def _server_alone(tmp_path: Path, repo: str = "", **env: str) -> subprocess.CompletedProcess:
    """The bundled tritonserver with nothing but the placeholder's restriction flags (it stops at parsing, or at
    a ``repo`` that is not there)."""
    install = find_install()
    if not install.bundled:
        pytest.skip("tritonserver comes from PATH here, not from the nvidia-pytriton wheel")
    libs = os.pathsep.join(map(str, bundled_lib_dirs(install.pytriton_dir)))
    return subprocess.run([str(install.binary), f"--model-repository={repo or tmp_path}", *restriction_flags(KEY_PLACEHOLDER)],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": libs, **env})


def test_a_server_the_key_does_not_reach_refuses_to_start(tmp_path):
    """Without the library the placeholder is no valid restriction (Triton exits before it listens); with the
    library but no value, the library stops it."""
    unfilled = _server_alone(tmp_path)
    assert unfilled.returncode != 0 and "--http-restricted-api option format" in unfilled.stdout + unfilled.stderr
    built = argvkey.library()
    no_value = _server_alone(tmp_path, LD_PRELOAD=str(built))
    assert no_value.returncode == 2 and f"{argvkey.VALUE_VAR} is not set" in no_value.stderr


@pytest.mark.server
def test_through_the_launch_script_the_key_reaches_tritonserver_only(cpu_server):
    """The CPU repository is served by its launch.sh (/bin/sh, which execs tritonserver): the library passes the
    shell untouched and fills the key in tritonserver, whose command line and stubs still hold none of it."""
    import psutil
    import requests

    assert cpu_server.launch_script is not None
    server = psutil.Process(cpu_server.pid)
    assert server.name() == "tritonserver"
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
    assert KEY_PLACEHOLDER.encode() in cmdline and cpu_server.admin_key.encode() not in cmdline
    url = f"http://{cpu_server.http_url}/v2/repository/index"
    assert requests.post(url, json={}, timeout=10).status_code == 403
    assert requests.post(url, json={}, headers=cpu_server.admin_headers, timeout=10).status_code == 200
    for stub in cpu_server.stubs():
        environ = Path(f"/proc/{stub}/environ").read_bytes()
        assert b"LD_PRELOAD=" not in environ and cpu_server.admin_key.encode() not in environ


def test_the_key_fills_the_restriction_flags_only(tmp_path):
    """A model repository folder named with the placeholder stays that folder: the key never becomes a path the
    server prints (its options table, "failed to stat file ...")."""
    built = argvkey.library()
    run = _server_alone(tmp_path, repo=str(tmp_path / f"x{KEY_PLACEHOLDER}"), LD_PRELOAD=str(built),
                        **{argvkey.VALUE_VAR: admin_credential("k3y-value")})
    out = run.stdout + run.stderr
    assert run.returncode != 0 and f"failed to stat file {tmp_path / f'x{KEY_PLACEHOLDER}'}" in out
    assert "k3y-value" not in out


def test_the_users_own_preload_reaches_the_server_and_its_children(tmp_path):
    """A user's LD_PRELOAD (tcmalloc for Triton, as NVIDIA suggests) is loaded beside the library and handed on
    to the server's children once the key is filled in; without one, LD_PRELOAD goes. The stand-in server is
    ``env`` named tritonserver: it prints the environment its children would inherit."""
    import shutil

    built = argvkey.library()
    stand_in = tmp_path / "tritonserver"
    shutil.copy(shutil.which("env"), stand_in)
    user = "/lib/x86_64-linux-gnu/libm.so.6" if Path("/lib/x86_64-linux-gnu/libm.so.6").exists() else str(built)
    for inherited, expected in ((user, f"LD_PRELOAD={user}"), (None, None)):
        env = {"PATH": os.environ["PATH"], **argvkey.handover_env(built, admin_credential("k3y"), inherited)}
        seen = subprocess.run([str(stand_in)], env=env, capture_output=True, text=True, timeout=30).stdout.splitlines()
        preloads = [line for line in seen if line.startswith("LD_PRELOAD=")]
        assert preloads == ([expected] if expected else []), seen
        assert not [line for line in seen if line.startswith(("TRITONGEN_", "k3y")) or "k3y" in line]
