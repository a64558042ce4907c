"""Docker image references, parsed the way the Docker engine does.

The grammar follows distribution/reference: ``[registry[:port]/]path[:tag][@algo:hex]``.
Parsing here, before anything is pulled, lets a typo in aiModels.json be reported with the
entry and the reason instead of surfacing later as an opaque pull failure. The normalised
form is also the key that dedupes pulls of one image wanted by several entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_REGISTRY", "ImageRef", "ImageRefError", "parse_image_ref"]

DEFAULT_REGISTRY = "docker.io"
_LEGACY_REGISTRIES = frozenset({"index.docker.io", "registry-1.docker.io"})
_MAX_NAME_LENGTH = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ImageRefError(ValueError):
    """An image reference Docker would refuse; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed image reference with Docker's defaults filled in."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def repository_ref(self) -> str:
        """What ``docker pull`` takes as the repository (registry included)."""
        return f"{self.registry}/{self.repository}"

    @property
    def pull_tag(self) -> str:
        """What to pull: the digest when pinned (it wins over any tag), else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def canonical(self) -> str:
        """The fully normalised reference; equal images give equal strings."""
        text = self.repository_ref
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def __str__(self) -> str:
        return self.canonical


def parse_image_ref(text: str) -> ImageRef:
    """Parse and normalise ``text``; raise ImageRefError saying exactly what is wrong."""
    _check_surface(text)
    name_and_tag, digest = _split_digest(text)
    name, tag = _split_tag(name_and_tag)
    registry, path = _split_registry(name)
    if registry is not None:
        _check_registry(registry)
    _check_path(path)
    if len(name) > _MAX_NAME_LENGTH:
        raise ImageRefError(
            f"the repository name is {len(name)} characters long; the limit is {_MAX_NAME_LENGTH}"
        )
    return _normalise(registry, path, tag, digest)


def _check_surface(text: str) -> None:
    if not text:
        raise ImageRefError("the image reference is empty")
    if any(ch.isspace() for ch in text):
        raise ImageRefError(f"{text!r} contains whitespace; image references have none")
    if _SCHEME.match(text):
        scheme = text.split("://", 1)[0]
        raise ImageRefError(
            f"{text!r} starts with '{scheme}://'; image references have no scheme "
            f"(write {text.split('://', 1)[1]!r})"
        )


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    name, _, digest = text.partition("@")
    if "@" in digest:
        raise ImageRefError(f"{text!r} has more than one '@'; only one digest is allowed")
    if not name:
        raise ImageRefError(f"{text!r} has a digest but no repository name before the '@'")
    _check_digest(digest)
    return name, digest


def _check_digest(digest: str) -> None:
    algorithm, sep, hex_part = digest.partition(":")
    if not sep:
        raise ImageRefError(f"digest {digest!r} must look like 'sha256:<64 hex digits>'")
    expected = _DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        known = ", ".join(_DIGEST_HEX_LENGTHS)
        raise ImageRefError(f"digest algorithm {algorithm!r} is not supported (use one of {known})")
    if len(hex_part) != expected or not re.fullmatch(r"[0-9a-f]+", hex_part):
        raise ImageRefError(
            f"digest {digest!r} must be {algorithm}: followed by exactly {expected} lowercase "
            f"hex digits (got {len(hex_part)} characters)"
        )


def _split_tag(name_and_tag: str) -> tuple[str, str | None]:
    colon = name_and_tag.rfind(":")
    if colon <= name_and_tag.rfind("/"):
        return name_and_tag, None
    name, tag = name_and_tag[:colon], name_and_tag[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise ImageRefError(
            f"tag {tag!r} is invalid: a tag is 1–128 letters, digits, '_', '.' or '-' "
            "and cannot start with '.' or '-'"
        )
    return name, tag


def _split_registry(name: str) -> tuple[str | None, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, name


def _check_registry(registry: str) -> None:
    host, port = registry, None
    if ("]:" if registry.startswith("[") else ":") in registry:
        host, _, port = registry.rpartition(":")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ImageRefError(f"registry {registry!r} has an invalid port {port!r}")
    if _IPV6.fullmatch(host):
        return
    if not host or not all(_DOMAIN_COMPONENT.fullmatch(part) for part in host.split(".")):
        raise ImageRefError(f"registry host {host!r} is not a valid host name or IP address")


def _check_path(path: str) -> None:
    if not path:
        raise ImageRefError("the repository path is empty")
    for component in path.split("/"):
        if not component:
            raise ImageRefError(f"repository path {path!r} has an empty component ('//' or '/')")
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise ImageRefError(
                f"repository path {path!r} contains uppercase letters; Docker repository names "
                f"are lowercase (write {path.lower()!r})"
            )
        raise ImageRefError(
            f"path component {component!r} is invalid: use lowercase letters and digits, "
            "separated by single '.', '_' or '__', or by '-'"
        )


def _normalise(registry: str | None, path: str, tag: str | None, digest: str | None) -> ImageRef:
    if registry is None or registry in _LEGACY_REGISTRIES:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry=registry, repository=path, tag=tag, digest=digest)
