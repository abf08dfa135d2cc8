"""Output folders: --force replaces only tritongen's own folders; leftovers of killed runs go."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app
from generator.errors import TritongenError
from generator.fsutil import MARKER, atomic_dir, remove_leftovers
from generator.repo.render import render_repository
from helpers import small_spec


def _write(target: Path, force: bool = False, **kw) -> None:
    with atomic_dir(target, force=force, **kw) as tmp:
        (tmp / "out.txt").write_text("new")


def test_force_replaces_a_folder_tritongen_wrote(tmp_path):
    target = tmp_path / "out"
    _write(target)
    assert (target / MARKER).is_file()
    (target / "out.txt").write_text("changed by a later run")
    _write(target, force=True)
    assert (target / "out.txt").read_text() == "new"


def test_force_never_replaces_a_folder_tritongen_did_not_write(tmp_path):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_text("precious")
    with pytest.raises(TritongenError, match="only a folder tritongen wrote.*no .tritongen-output marker"):
        _write(target, force=True)
    assert (target / "holiday.jpg").read_text() == "precious"


def test_force_never_replaces_files_added_to_tritongen_output(tmp_path):
    target = tmp_path / "out"
    _write(target)
    (target / "notes.md").write_text("mine")
    with pytest.raises(TritongenError, match="files tritongen did not write there: notes.md"):
        _write(target, force=True)
    assert (target / "notes.md").read_text() == "mine"


def test_force_never_replaces_a_path_the_spec_names(tokenizer_weights_dir, tmp_path):
    """The spec's model folder lives inside a folder tritongen wrote: rendering over it must refuse."""
    art = tmp_path / "art"
    _write(art)  # a marked folder, so only the spec check can refuse
    spec = small_spec(tokenizer_weights_dir, art)
    assert spec.model_dir == art / "model"
    with pytest.raises(TritongenError, match="holds the spec's model_dir"):
        render_repository(spec, art, force=True)
    with pytest.raises(TritongenError, match="holds the spec's checkpoint_dir"):
        render_repository(spec, tokenizer_weights_dir, force=True)
    assert (tokenizer_weights_dir / "config.json").is_file()


def test_force_never_replaces_the_working_directory(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _write(target)
    monkeypatch.chdir(target)
    with pytest.raises(TritongenError, match="holds the working directory"):
        _write(tmp_path / "out", force=True)


def test_render_cli_force_refuses_a_user_folder(tokenizer_weights_dir, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(small_spec(tokenizer_weights_dir, tmp_path / "art").to_yaml_dict()))
    result = CliRunner().invoke(app, ["render", str(spec_file), "-o", str(user), "--force",
                                      "--set", "serving.engine=cpu-reference"])
    assert isinstance(result.exception, TritongenError), result.output
    assert "only a folder tritongen wrote" in str(result.exception)
    assert (user / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("force", [True, False])
def test_what_the_user_puts_into_the_output_while_the_command_runs_is_never_replaced(tmp_path, force):
    """The check at the start is not enough: a load test or tune holds the folder for hours (review 11)."""
    target = tmp_path / "out"
    if force:
        _write(target)
    with pytest.raises(TritongenError, match="changed while this command ran") as err:
        with atomic_dir(target, force=force) as tmp:
            (tmp / "out.txt").write_text("new")
            target.mkdir(exist_ok=True)
            (target / "NOTES.md").write_text("mine")
    assert (target / "NOTES.md").read_text() == "mine"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.new-")]
    assert [p.name for p in kept] == [p.name for p in tmp_path.iterdir() if p != target]  # no temporary folder left
    assert (kept[0] / "out.txt").read_text() == "new" and str(kept[0]) in err.value.message


def test_an_output_that_is_a_symlink_loop_is_an_error_naming_it(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    for target in (tmp_path / "loop", tmp_path / "loop" / "x"):
        with pytest.raises(TritongenError, match="leads back to itself"):
            _write(target)


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path):
    target = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".out.tmp-{dead_pid}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_text("gigabytes")
    mine = tmp_path / f".out.tmp-{os.getppid()}-live"  # a process still running: maybe writing now
    mine.mkdir()
    unrelated = tmp_path / ".other.tmp-1-x"
    unrelated.mkdir()
    _write(target)
    assert not stale.exists()
    assert mine.exists() and unrelated.exists()
    assert remove_leftovers(target) == []


def test_a_cache_copy_left_by_a_killed_run_is_removed_by_the_next(tmp_path, monkeypatch):
    """review11: a kill -9 while a model or checkpoint was copied into the cache left its staging folder for ever."""
    from generator.fsutil import CACHE_VAR, keep_copy, kept_folder, reusable

    monkeypatch.setenv(CACHE_VAR, str(tmp_path / "cache"))
    kept = kept_folder("quantize", "0123abcd")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = kept.parent / f".{kept.name}.tmp-{int(dead.stdout)}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_text("half a checkpoint")
    built = tmp_path / "built"
    built.mkdir()
    (built / "model.safetensors").write_text("a whole checkpoint")
    keep_copy(built, kept)
    assert reusable(kept) and (kept / "model.safetensors").read_text() == "a whole checkpoint"
    assert sorted(p.name for p in kept.parent.iterdir()) == [kept.name]


def test_a_cache_folder_another_user_could_rename_is_refused_and_links_are_resolved(tmp_path, monkeypatch):
    """review14: with XDG_CACHE_HOME in a folder others may write (another user's, or a shared one), that user
    swapped the private cache folder between tritongen's check and its use (a kept checkpoint, the LD_PRELOAD
    library). Such a folder is refused; /tmp's sticky bit keeps others from renaming, so under it the cache is used,
    by a path without links."""
    from generator.errors import ArtifactCorrupt
    from generator.fsutil import CACHE_VAR, kept_folder

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.delenv(CACHE_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    with pytest.raises(ArtifactCorrupt, match=f"other users may write to {shared} "):
        kept_folder("quantize", "0123abcd")
    shared.chmod(0o1777)
    (tmp_path / "link").symlink_to(shared)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "link"))
    assert kept_folder("quantize", "0123abcd") == shared / "tritongen" / "quantize" / "0123abcd"


def test_a_cache_folder_made_under_umask_0000_is_used(tmp_path, monkeypatch):
    """The folders tritongen makes above its cache folder are writable by this user alone, whatever the umask: the
    check of the folders above refused what tritongen had just made under umask 0000."""
    from generator.fsutil import CACHE_VAR, kept_folder

    monkeypatch.setenv(CACHE_VAR, str(tmp_path / "made" / "here" / "tritongen"))
    before = os.umask(0)
    try:
        kept = kept_folder("quantize", "0123abcd")
    finally:
        os.umask(before)
    assert kept.parent.stat().st_mode & 0o777 == 0o700 and not (tmp_path / "made").stat().st_mode & 0o022


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_force_never_deletes_a_file_added_inside_a_model_folder(tmp_path):
    """Finding 15: NVIDIA's model.py copied into tensorrt_llm/1/ (as the README says) survives --force."""
    target = tmp_path / "repo"
    with atomic_dir(target) as tmp:
        (tmp / "tensorrt_llm" / "1").mkdir(parents=True)
        (tmp / "tensorrt_llm" / "1" / "model.yaml").write_text("ours")
    (target / "tensorrt_llm" / "1" / "__pycache__").mkdir()  # Python's own: never counts as the user's
    (target / "tensorrt_llm" / "1" / "model.py").write_text("NVIDIA's, copied by the user")
    with pytest.raises(TritongenError, match="tensorrt_llm/1/model.py"):
        _write(target, force=True)
    assert (target / "tensorrt_llm" / "1" / "model.py").read_text() == "NVIDIA's, copied by the user"
    (target / "tensorrt_llm" / "1" / "model.py").unlink()
    _write(target, force=True)  # nothing of the user's left: --force replaces it
    assert (target / "out.txt").is_file()


def test_force_never_replaces_a_demo_folder_with_other_output(tmp_path):
    """Finding 15: a folder the demo marked (filled bit by bit) holding a user's file is not replaced by render."""
    from generator.fsutil import check_writable_target, write_marker

    demo = tmp_path / "demo-out"
    demo.mkdir()
    write_marker(demo)
    (demo / "notes.md").write_text("mine")
    with pytest.raises(TritongenError, match="demo"):
        _write(demo, force=True)
    assert (demo / "notes.md").read_text() == "mine"
    check_writable_target(demo, True, fill_in_place=True)  # the demo itself still writes into it
