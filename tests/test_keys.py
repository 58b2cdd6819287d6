"""`soundwatch keys`: never overwrites keys without --force, never writes through a planted symlink,
secrets are 0600 from the start and load with pyzmq."""

from __future__ import annotations

import stat

import zmq.auth

from helpers import run_soundwatch

FILES = ("server.key", "server.key_secret", "client.key", "client.key_secret", "clients/client.key")


def _contents(directory):
    return {name: (directory / name).read_bytes() for name in FILES}


def test_keys_are_loadable_and_secrets_private(tmp_path):
    out = tmp_path / "keys"
    r = run_soundwatch("keys", "--out", str(out))
    assert r.returncode == 0, r.stderr
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(str(out / "server.key_secret"))
    assert zmq.auth.load_certificate(str(out / "server.key")) == (public, None)
    assert secret is not None and zmq.curve_public(secret) == public
    client_public, client_secret = zmq.auth.load_certificate(str(out / "client.key_secret"))
    assert zmq.curve_public(client_secret) == client_public
    assert zmq.auth.load_certificates(str(out / "clients")) == {client_public: True}


def test_existing_keys_are_kept_unless_force(tmp_path):
    out = tmp_path / "keys"
    assert run_soundwatch("keys", "--out", str(out)).returncode == 0
    before = _contents(out)
    r = run_soundwatch("keys", "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "already exist" in r.stderr and "--force" in r.stderr
    assert _contents(out) == before
    r = run_soundwatch("keys", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    after = _contents(out)
    assert all(after[name] != before[name] for name in FILES)
    assert stat.S_IMODE((out / "server.key_secret").stat().st_mode) == 0o600


def test_planted_symlink_is_never_followed(tmp_path):
    out = tmp_path / "keys"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("the user's own file\n")
    target.chmod(0o644)
    (out / "server.key_secret").symlink_to(target)
    r = run_soundwatch("keys", "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "server.key_secret" in r.stderr
    assert target.read_text() == "the user's own file\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not (out / "server.key").exists()  # refused before writing anything
    # --force replaces the link itself, never what it points to
    r = run_soundwatch("keys", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert not (out / "server.key_secret").is_symlink()
    assert stat.S_IMODE((out / "server.key_secret").stat().st_mode) == 0o600
    assert target.read_text() == "the user's own file\n" and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_keys_out_that_is_a_file(tmp_path):
    """--out naming a file, or a path under one: exit 2 saying so, and the file untouched."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for out, needle in ((a_file, "is a file, not a directory"), (a_file / "keys", f"{a_file} is not a directory")):
        r = run_soundwatch("keys", "--out", str(out))
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert a_file.read_text() == "x"
