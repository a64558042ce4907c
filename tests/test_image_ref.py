"""Image references: Docker's normalisation, and a precise reason for each refusal."""

from __future__ import annotations

import re

import pytest

from byoc_orch.image_ref import ImageRef, ImageRefError, parse_image_ref

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("ubuntu", "docker.io/library/ubuntu:latest"),
        ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("livepeer/comfystream", "docker.io/livepeer/comfystream:latest"),
        ("docker.io/ubuntu", "docker.io/library/ubuntu:latest"),
        ("index.docker.io/livepeer/x:1", "docker.io/livepeer/x:1"),
        ("ghcr.io/org/team/worker:v1.2.3", "ghcr.io/org/team/worker:v1.2.3"),
        ("localhost/worker", "localhost/worker:latest"),
        ("localhost:5000/worker:dev", "localhost:5000/worker:dev"),
        (f"127.0.0.1:5000/x/y:1@{DIGEST}", f"127.0.0.1:5000/x/y:1@{DIGEST}"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        ("[::1]:5000/worker:1", "[::1]:5000/worker:1"),
        ("org/a.b-c__d/e---f:_T.x-1", "docker.io/org/a.b-c__d/e---f:_T.x-1"),
    ],
)
def test_normalises_like_docker(text: str, canonical: str) -> None:
    ref = parse_image_ref(text)
    assert ref.canonical == canonical
    assert str(ref) == canonical
    assert parse_image_ref(canonical) == ref


def test_fields_and_pull_arguments() -> None:
    ref = parse_image_ref("livepeer/comfystream:0.1")
    assert ref == ImageRef("docker.io", "livepeer/comfystream", "0.1", None)
    assert ref.repository_ref == "docker.io/livepeer/comfystream"
    assert ref.pull_tag == "0.1"


def test_digest_wins_over_tag_for_pulling() -> None:
    ref = parse_image_ref(f"127.0.0.1:5000/x/y:1@{DIGEST}")
    assert ref == ImageRef("127.0.0.1:5000", "x/y", "1", DIGEST)
    assert ref.repository_ref == "127.0.0.1:5000/x/y"
    assert ref.pull_tag == DIGEST


def test_digest_only_has_no_default_tag() -> None:
    ref = parse_image_ref(f"busybox@{DIGEST}")
    assert ref.tag is None
    assert ref.pull_tag == DIGEST


def test_first_component_is_a_path_unless_it_looks_like_a_host() -> None:
    assert parse_image_ref("myorg/worker").registry == "docker.io"
    assert parse_image_ref("my.registry/worker").registry == "my.registry"
    assert parse_image_ref("registry:5000/worker").registry == "registry:5000"


def test_port_without_a_slash_is_a_tag() -> None:
    ref = parse_image_ref("localhost:5000")
    assert (ref.repository, ref.tag) == ("library/localhost", "5000")


def test_is_frozen_and_hashable() -> None:
    ref = parse_image_ref("ubuntu")
    assert {ref, parse_image_ref("docker.io/library/ubuntu:latest")} == {ref}
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Livepeer/Comfystream", "uppercase"),
        ("ghcr.io/Org/x", "uppercase"),
        ("livepeer//x", "empty component"),
        ("livepeer/x/", "empty component"),
        ("livepeer/x:", "tag ''"),
        ("livepeer/x:-bad", "tag '-bad'"),
        ("livepeer/x:" + "a" * 129, "1–128"),
        ("livepeer/x@sha256:abc", "exactly 64"),
        ("livepeer/x@sha256:" + "AB" * 32, "lowercase"),
        ("livepeer/x@md5:" + "a" * 32, "not supported"),
        ("livepeer/x@" + "a" * 64, "sha256:<64"),
        ("livepeer/x@a@b", "more than one '@'"),
        ("@" + DIGEST, "no repository"),
        ("livepeer/comfy stream", "whitespace"),
        (" ubuntu", "whitespace"),
        ("https://ghcr.io/org/x", "no scheme"),
        ("ghcr.io:99999/x", "invalid port"),
        ("bad_host.io/x", "not a valid host"),
        ("livepeer/-x", "path component '-x'"),
        ("livepeer/x..y", "path component 'x..y'"),
        ("a/" + "b" * 260, "limit is 255"),
    ],
)
def test_refusals_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ImageRefError) as caught:
        parse_image_ref(text)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_scheme_error_shows_the_reference_to_write() -> None:
    with pytest.raises(ImageRefError, match=re.escape("write 'ghcr.io/org/x'")):
        parse_image_ref("https://ghcr.io/org/x")


def test_uppercase_error_suggests_the_lowercase_path() -> None:
    with pytest.raises(ImageRefError, match="write 'livepeer/comfystream'"):
        parse_image_ref("Livepeer/ComfyStream:latest")
