"""`ratchet models` / `ratchet doctor` rows: key presence without values, local probes."""

from __future__ import annotations

import stat

from fakeservers import FakeModelServer

from ratchetloop.doctor import doctor_rows, model_rows


def as_dict(rows):
    return {r.check: r for r in rows}


def test_model_rows_keys_servers_and_clis(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-VISIBLE-NEVER")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("RATCHET_KEYS_FILE", str(tmp_path / "absent.json"))
    fake = tmp_path / "claude"
    fake.write_text("#!/bin/sh\necho '2.1.0 (Claude Code)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with FakeModelServer() as srv:
        monkeypatch.setenv("OLLAMA_HOST", srv.base_url)
        rows = model_rows([srv.openai_base_url])
        paths = [r.path for r in srv.requests]
    got = as_dict(rows)
    assert got["openai key"].status == "ok" and "set (env)" in got["openai key"].detail
    assert got["anthropic key"].status == "missing"
    assert got["ollama"].status == "ok" and "/api/tags" in paths
    assert got[f"server {srv.openai_base_url}"].status == "ok" and "/v1/models" in paths
    assert got["claude-cli"].status == "ok" and "2.1.0" in got["claude-cli"].detail
    assert got["codex-cli"].status == "missing"
    assert all("sk-VISIBLE-NEVER" not in repr(r) for r in rows)


def test_unreachable_ollama(monkeypatch):
    with FakeModelServer() as srv:
        url = srv.base_url
    monkeypatch.setenv("OLLAMA_HOST", url)  # closed port now
    assert as_dict(model_rows())["ollama"].status == "unreachable"


def test_doctor_rows_cover_toolchain_sandbox_and_bad_keys_file(tmp_path, monkeypatch):
    keyfile = tmp_path / "keys.json"
    keyfile.write_text("{}")
    keyfile.chmod(0o644)
    monkeypatch.setenv("RATCHET_KEYS_FILE", str(keyfile))
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    got = as_dict(doctor_rows(None))
    assert "toolchain gcc" in got and "toolchain git" in got
    assert any(name.startswith("sandbox") for name in got)
    assert got["keys file"].status == "warn" and "chmod 600" in got["keys file"].detail
