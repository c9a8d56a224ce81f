"""Issue 16's acceptance on the file system: concurrent runs to one destination, --force next to the source, a
read-only file system, unreadable input, a FIFO, symlinks out of the folder, a dangling symlink as destination, and
the one-line internal error."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from modelport import api
from modelport.cli import main
from modelport.formats import atomic, gguf
from modelport.formats.atomic import atomic_output
from modelport.formats.errors import OutputExists

import malicious
from support.cli import run_cli

WIDE = {**malicious.CONFIG, "hidden_size": 256, "intermediate_size": 512, "vocab_size": 16384,
        "num_attention_heads": 4, "num_key_value_heads": 4}


def cli(*args) -> subprocess.CompletedProcess:
    """The CLI in this process (seconds faster than a child); the tests that need a child process use run_cli."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def one_line(r, code: int, words: str) -> None:
    assert r.returncode == code, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def sha256s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_two_runs_to_one_destination_give_one_winner(tmp_path):
    src = malicious.hf_folder(tmp_path, WIDE)
    reference = tmp_path / "reference.gguf"
    api.convert(src, reference)
    dst = tmp_path / "m.gguf"
    exe = Path(sys.executable).with_name("modelport")
    procs = [subprocess.Popen([str(exe), "convert", str(src), str(dst)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert len(loser.strip().splitlines()) == 1 and "m.gguf" in loser, loser
    assert dst.read_bytes() == reference.read_bytes()  # whole, and what a lone run writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "model", "reference.gguf"]


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "link-or-lock"])
@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_publication_never_replaces_what_appeared_meanwhile(folder, fallback, tmp_path, monkeypatch):
    """The race itself, deterministically: DST appears while a run is writing; that run loses, the other's DST
    stays as it was, and no partial is left; also where the C library has no renameat2 (musl, macOS)."""
    if fallback:
        monkeypatch.setattr(atomic, "_renameat2", None)
    dst = tmp_path / "out"

    def fill(p: Path, text: str) -> None:
        if folder:
            p.mkdir()
            (p / "f").write_text(text)
        else:
            p.write_text(text)

    with pytest.raises(OutputExists, match="created by another run meanwhile"):
        with atomic_output(dst) as slow:
            fill(slow, "slow")
            with atomic_output(dst) as fast:
                fill(fast, "fast")
    assert ((dst / "f") if folder else dst).read_text() == "fast"
    assert [p.name for p in tmp_path.iterdir() if p.name != ".out.lock"] == ["out"]


@pytest.mark.parametrize("where", ["holds", "is"])
def test_force_onto_the_source_is_refused(where, tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    src = malicious.hf_folder(outer)
    before = sha256s(src)
    dst = outer if where == "holds" else src
    r = cli("convert", src, dst, "--to", "safetensors", "--force")
    one_line(r, 2, "refusing to overwrite an input")
    assert sha256s(src) == before


def test_force_onto_a_file_inside_the_source_is_refused(tmp_path):
    src = malicious.hf_folder(tmp_path)
    before = sha256s(src)
    r = cli("convert", src, src / "model.safetensors", "--force")
    one_line(r, 2, "refusing to overwrite an input")
    assert sha256s(src) == before


@pytest.fixture
def read_only_fs(tmp_path):
    """A read-only tmpfs (needs root, as CI runs). As a plain user, a folder without write permission gives the
    same one line with exit 5 (permission denied)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M,ro", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_read_only_file_system_is_one_line_exit_5(read_only_fs, tmp_path):
    src = malicious.hf_folder(tmp_path)
    r = cli("convert", src, read_only_fs / "m.gguf")
    one_line(r, 5, "read-only file system")
    assert list(read_only_fs.iterdir()) == []


def test_unreadable_input_is_one_line_exit_2(tmp_path):
    tmp_path = Path(tempfile.mkdtemp(prefix="modelport-unreadable-"))  # /tmp/pytest-of-root is root's own
    tmp_path.chmod(0o777)
    src = malicious.hf_folder(tmp_path)
    (src / "model.safetensors").chmod(0)
    cmd = [str(Path(sys.executable).with_name("modelport")), "convert", str(src), str(tmp_path / "out.gguf")]
    if os.geteuid() == 0:  # root reads anything: run as nobody (setpriv, util-linux)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        if subprocess.run([*nobody, sys.executable, "-c", "import modelport"], capture_output=True).returncode:
            pytest.skip("nobody cannot run this checkout's interpreter (a checkout under a private folder)")
        cmd = [*nobody, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    one_line(r, 2, "cannot read: permission denied")
    assert "model.safetensors" in r.stderr
    shutil.rmtree(tmp_path)


def test_fifo_is_refused_without_blocking(tmp_path):
    r = subprocess.run([str(Path(sys.executable).with_name("modelport")), "inspect", str(malicious.fifo(tmp_path))],
                       capture_output=True, text=True, timeout=120)
    one_line(r, 2, "is a FIFO, not a regular file")


def test_a_shard_symlinked_out_of_the_folder_is_refused(tmp_path):
    outside = malicious.hf_folder(tmp_path, name="elsewhere")
    src = malicious.hf_folder(tmp_path)
    (src / "model.safetensors").unlink()
    (src / "model.safetensors").symlink_to(outside / "model.safetensors")
    r = cli("convert", src, tmp_path / "out.gguf")
    one_line(r, 2, "leads out of the model folder")
    assert not (tmp_path / "out.gguf").exists()


def test_a_dangling_symlink_destination_needs_force(tmp_path):
    src = malicious.hf_folder(tmp_path)
    dst = tmp_path / "m.gguf"
    dst.symlink_to(tmp_path / "nowhere.gguf")
    one_line(cli("convert", src, dst), 2, "pass --force")
    assert dst.is_symlink() and not (tmp_path / "nowhere.gguf").exists()
    assert cli("convert", src, dst, "--force").returncode == 0
    assert not dst.is_symlink() and gguf.read(dst).tensors


def test_an_internal_error_is_one_line_exit_70(tmp_path, monkeypatch):
    src = malicious.hf_folder(tmp_path)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")  # stands for any defect of ours the checks above did not foresee

    monkeypatch.setattr(api, "convert", broken)
    r = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "out.gguf")])
    assert r.exit_code == 70
    assert r.stderr.strip().splitlines() == [f"modelport: {src}: internal error (ZeroDivisionError: a bug), please "
                                             "report; rerun with --debug for the traceback"]
    r = CliRunner().invoke(main, ["--debug", "convert", str(src), str(tmp_path / "out.gguf")])
    assert r.exit_code == 70 and "Traceback" in r.stderr and "ZeroDivisionError: a bug" in r.stderr
    monkeypatch.setenv("MODELPORT_DEBUG", "1")
    assert "Traceback" in CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "x.gguf")]).stderr
    assert np.all([not p.name.startswith(("out", "x.")) for p in tmp_path.iterdir()])
