"""Secrets by reference: the one reader of env:VARIABLE and file:/path (transform profiles, DICOMweb)."""

import pytest

from apps.core import secret_refs


def test_a_secret_is_read_from_the_environment_or_a_file_without_its_newline(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTER_TEST_REF", " s3cret ")
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    assert secret_refs.read("env:ROUTER_TEST_REF") == b"s3cret"
    assert secret_refs.read(f"file:{path}") == b"from-file"


@pytest.mark.parametrize("reference", ["env:ROUTER_TEST_UNSET", "file:/nonexistent/secret", "plain:x"])
def test_a_reference_to_nothing_is_refused_naming_the_reference_not_a_value(reference, monkeypatch):
    monkeypatch.delenv("ROUTER_TEST_UNSET", raising=False)
    with pytest.raises(secret_refs.SecretUnavailable, match="ROUTER_TEST_UNSET|/nonexistent/secret|plain:x"):
        secret_refs.read(reference)


def test_only_env_and_file_references_are_references():
    assert secret_refs.is_reference("env:X") and secret_refs.is_reference("file:/etc/x")
    assert not secret_refs.is_reference("env:") and not secret_refs.is_reference("hunter2")
