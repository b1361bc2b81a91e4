"""One redaction for every URL that reaches a message, a record, a log, an attestation or a tracker.

Servers hand out signed links (a Git LFS href with `?jwt=…`, an S3 presigned URL with
`X-Amz-Signature=…`); a user may put `user:password@` in a remote's URL. What xrun prints or
writes keeps the URL readable — scheme, host, path, the names of its parameters — with each secret
value replaced by `REDACTED`. It works on free text, so a URL inside an error from a library (or a
bare `/path?token=…` in urllib3's "Max retries exceeded with url: …") is caught as well.
"""

from __future__ import annotations

import re

REDACTED = "REDACTED"
# Query parameters that carry a credential in signed or pre-authorised URLs (AWS v2/v4, GCS, Azure SAS,
# giftless/JWT, OAuth); compared case-insensitively.
CREDENTIAL_PARAMS = frozenset({
    "jwt", "token", "access_token", "id_token", "refresh_token", "auth", "authorization", "password", "passwd",
    "secret", "client_secret", "api_key", "api-key", "x-api-key", "apikey", "sig", "signature", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token", "awsaccesskeyid", "x-goog-signature", "x-goog-credential", "x-goog-security-token",
    "private_token", "session_token",
})
# Names that end like a credential are one too (`upload_token`, `X-Foo-Signature`), but not `tokenizer`.
_CREDENTIAL_SUFFIX = re.compile(r"[-_.](token|signature|secret|password|credential)$", re.IGNORECASE)
# The value runs to the next delimiter; a single trailing punctuation mark before a space or the end
# ("…?jwt=abc: sha256 mismatch") belongs to the sentence, not to the value.
_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z0-9_.~%-]+)=(?P<value>[^&#\s'\"<>]*?)"
                    r"(?=[.,:;)\]]?(?:[&#\s'\"<>]|$))")
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"<>?#]+)@")
_AUTH_HEADER = re.compile(r"\b(?P<kind>Bearer|Basic|Token)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")


def is_credential_param(name: str) -> bool:
    """Whether a URL query parameter of this name carries a credential."""
    return name.lower() in CREDENTIAL_PARAMS or bool(_CREDENTIAL_SUFFIX.search(name))


def credential_params(url: str) -> list[str]:
    """The names of the credential-bearing query parameters of `url` (sorted, lower case)."""
    query = url.partition("#")[0].partition("?")[2]
    names = {part.partition("=")[0].lower() for part in re.split(r"[&;]", query) if part}
    return sorted(n for n in names if is_credential_param(n))


def redact(text: str) -> str:
    """`text` with every URL's userinfo, credential query values and Authorization values replaced by REDACTED."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _PARAM.sub(_param, text)
    return _AUTH_HEADER.sub(lambda m: f"{m['kind']} {REDACTED}", text)


def redact_lines(lines: list[str]) -> list[str]:
    """redact() of each line."""
    return [redact(line) for line in lines]


def _param(match: re.Match[str]) -> str:
    if not is_credential_param(match["name"]) or not match["value"]:
        return match[0]
    return f"{match['lead']}{match['name']}={REDACTED}"
