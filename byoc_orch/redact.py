"""Keeping credentials out of what byoc-orch shows: URLs without their `user:password@` part."""

from __future__ import annotations

MASK = "***@"
"""What stands for the credentials where the operator must see there were some (`validate`,
aiModels.json problems)."""


def display_url(url: str, *, mask: str = "") -> str:
    """``url`` for logs, the API and `validate`: any ``user:password@`` before the host becomes
    ``mask`` (dropped by default). Read as text, so a URL too broken to parse is redacted too."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at == -1:
        return url
    return f"{scheme}://{mask}{rest[at + 1 :]}"
