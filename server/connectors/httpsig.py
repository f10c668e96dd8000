"""HTTP message signatures (RFC 9421) with HMAC-SHA256: checking a signed request (any thread).

A platform that signs its requests sends two structured header fields (RFC 8941 dictionaries):
``Signature-Input`` names the covered components and the signature parameters, e.g.
``sig1=("@request-target" "@authority" "x-api-key");keyid="...";nonce="...";alg="hmac-sha256";
created=1641013200;expires=1641013230``, and ``Signature`` holds the MAC as a byte sequence,
``sig1=:<base64>:``. The signature base is one line per covered component, ``"<name>": <value>``,
then ``"@signature-params": <the inner list re-serialised>``; the MAC is HMAC-SHA256 of it with
the shared secret.

:func:`verify_hmac_signature` checks all of it and raises :class:`SignatureError` (its ``code``
names the case, for counters) on the first failure: the required components must be covered,
``keyid`` must be the expected key id, ``alg`` (when given) ``hmac-sha256``, ``created`` no older
than the maximum age (nor in the future beyond a small clock skew), ``expires`` (when given) not
past, the MAC equal in constant time, and only then the ``nonce`` new to the
:class:`NonceCache` (so that unsigned requests cannot fill it). Everything is pure apart from
the cache; the caller passes ``now``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "CLOCK_SKEW_S",
    "NonceCache",
    "SignatureError",
    "verify_hmac_signature",
]

#: how far a signer's clock may run ahead of ours (``created`` in the future), seconds
CLOCK_SKEW_S = 5.0
_MAX_FIELD_CHARS = 4096
_MAX_NONCE_CHARS = 256
_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9:/!#$%&'*+.^_`|~-]*")
_INTEGER = re.compile(r"-?[0-9]{1,15}")
_DERIVED = ("@request-target", "@authority")


class SignatureError(Exception):
    """A signature that does not check out; ``code`` names the case (a counter name).

    Codes raised here: ``no_signature``, ``bad_signature_input``, ``missing_component``,
    ``bad_key_id``, ``bad_algorithm``, ``signature_expired``, ``bad_signature``,
    ``replayed_nonce``, ``nonce_cache_full``; a caller checking more of the same request (an
    API key header) raises it with codes of its own.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NonceCache:
    """Nonces seen in the last ``ttl_s`` seconds, at most ``max_entries`` (event loop).

    A nonce is remembered until its signature could no longer pass the age check, so a replay
    inside that time is caught; when the cache is full of nonces still in their time, new
    requests are refused (``nonce_cache_full``) rather than forgetting one early.
    """

    def __init__(self, ttl_s: float, *, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._expiry: OrderedDict[str, float] = OrderedDict()  # in order of arrival

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, nonce: str, now: float) -> None:
        """Remember ``nonce``; SignatureError when it was seen already or the cache is full."""
        while self._expiry and next(iter(self._expiry.values())) <= now:
            self._expiry.popitem(last=False)
        if nonce in self._expiry:
            raise SignatureError("replayed_nonce", "the signature's nonce was used already")
        if len(self._expiry) >= self.max_entries:
            raise SignatureError(
                "nonce_cache_full", f"{self.max_entries} signed requests in {self.ttl_s:g} s; "
                "refusing more until older nonces expire")
        self._expiry[nonce] = now + self.ttl_s


# -- RFC 8941 structured fields: the subset signatures use -------------------------------------

@dataclass(frozen=True, slots=True)
class _Token:
    """An RFC 8941 token (a bare word), kept apart from strings for re-serialising."""

    text: str


_Bare = str | int | bool | bytes | _Token
_Params = tuple[tuple[str, _Bare], ...]
_Item = tuple[_Bare, _Params]
_Member = tuple[_Bare | list[_Item], _Params]  # an item, or an inner list and its parameters


class _FieldParser:
    """Parses one RFC 8941 dictionary field (strings, integers, tokens, bytes, booleans)."""

    def __init__(self, text: str) -> None:
        self.text = text.strip(" \t")
        self.at = 0

    def fail(self, what: str) -> SignatureError:
        return SignatureError("bad_signature_input",
                              f"malformed signature header: {what} at character {self.at}")

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.at += 1

    def dictionary(self) -> dict[str, _Member]:
        members: dict[str, _Member] = {}
        while self.at < len(self.text):
            name = self.key()
            if self.peek() == "=":
                self.at += 1
                value: _Bare | list[_Item] = (
                    self.inner_list() if self.peek() == "(" else self.bare())
            else:
                value = True
            members[name] = (value, self.params())
            self.skip(" \t")
            if self.at >= len(self.text):
                break
            if self.peek() != ",":
                raise self.fail("expected ','")
            self.at += 1
            self.skip(" \t")
            if self.at >= len(self.text):
                raise self.fail("trailing ','")
        return members

    def key(self) -> str:
        match = _KEY.match(self.text, self.at)
        if match is None:
            raise self.fail("expected a key")
        self.at = match.end()
        return match.group()

    def inner_list(self) -> list[_Item]:
        self.at += 1  # "("
        items: list[_Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.at += 1
                return items
            items.append((self.bare(), self.params()))
            if self.peek() not in (" ", ")"):
                raise self.fail("expected ' ' or ')' in an inner list")

    def params(self) -> _Params:
        found: list[tuple[str, _Bare]] = []
        while self.peek() == ";":
            self.at += 1
            self.skip(" ")
            name = self.key()
            value: _Bare = True
            if self.peek() == "=":
                self.at += 1
                value = self.bare()
            found.append((name, value))
        return tuple(found)

    def bare(self) -> _Bare:
        first = self.peek()
        if first == '"':
            return self.string()
        if first == ":":
            end = self.text.find(":", self.at + 1)
            if end < 0:
                raise self.fail("unterminated byte sequence")
            raw, self.at = self.text[self.at + 1:end], end + 1
            try:
                return base64.b64decode(raw, validate=True)
            except ValueError:
                raise self.fail("bad base64 in a byte sequence") from None
        if first == "?" and self.text[self.at + 1:self.at + 2] in ("0", "1"):
            self.at += 2
            return self.text[self.at - 1] == "1"
        number = _INTEGER.match(self.text, self.at)
        if number is not None and self.text[number.end():number.end() + 1] != ".":
            self.at = number.end()
            return int(number.group())
        token = _TOKEN.match(self.text, self.at)
        if token is not None:
            self.at = token.end()
            return _Token(token.group())
        raise self.fail("expected a string, integer, token, byte sequence or boolean")

    def string(self) -> str:
        out: list[str] = []
        self.at += 1
        while self.at < len(self.text):
            char = self.text[self.at]
            self.at += 1
            if char == "\\":
                escaped = self.text[self.at:self.at + 1]
                if escaped not in ('"', "\\"):
                    raise self.fail("bad escape in a string")
                out.append(escaped)
                self.at += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise self.fail("a string holds only printable ASCII")
            else:
                out.append(char)
        raise self.fail("unterminated string")


def _serialize_bare(value: _Bare) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return f":{base64.b64encode(value).decode()}:"
    if isinstance(value, _Token):
        return value.text
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_params(params: _Params) -> str:
    return "".join(f";{name}" if value is True else f";{name}={_serialize_bare(value)}"
                   for name, value in params)


def _serialize_inner_list(items: list[_Item], params: _Params) -> str:
    inner = " ".join(_serialize_bare(value) + _serialize_params(p) for value, p in items)
    return f"({inner}){_serialize_params(params)}"


def _parse(text: str | None, what: str) -> dict[str, _Member]:
    if not text:
        raise SignatureError("no_signature", f"no {what} header: the request is not signed")
    if len(text) > _MAX_FIELD_CHARS:
        raise SignatureError("bad_signature_input", f"the {what} header is too long")
    return _FieldParser(text).dictionary()


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Signed:
    """The first signature of a request: what it covers, its parameters and its MAC."""

    components: tuple[str, ...]
    params: dict[str, _Bare]
    base_params: str  # the @signature-params value
    mac: bytes


def _first_signature(signature_input: str | None, signature: str | None) -> _Signed:
    inputs = _parse(signature_input, "Signature-Input")
    macs = _parse(signature, "Signature")
    if not inputs:
        raise SignatureError("no_signature", "an empty Signature-Input header")
    label, (covered, params) = next(iter(inputs.items()))
    mac = macs.get(label, (None, ()))[0]
    if not isinstance(mac, bytes):
        raise SignatureError("bad_signature_input",
                             f"no Signature byte sequence for the label {label!r}")
    if not isinstance(covered, list) or any(
        not isinstance(name, str) or p for name, p in covered
    ):
        raise SignatureError("bad_signature_input",
                             "Signature-Input must list the covered components as plain strings")
    names = tuple(str(name) for name, _ in covered)
    if len(set(names)) != len(names):
        raise SignatureError("bad_signature_input", "a component is covered twice")
    return _Signed(names, dict(params), _serialize_inner_list(covered, params), mac)


def _check_params(signed: _Signed, *, keyid: str, max_age_s: float, now: float) -> str:
    """The key id, algorithm and times of a signature; returns its nonce."""
    params = signed.params
    given = params.get("keyid")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), keyid.encode()):
        raise SignatureError("bad_key_id", "the signature's keyid is not the API key")
    if params.get("alg", "hmac-sha256") != "hmac-sha256":
        raise SignatureError("bad_algorithm", "only alg=\"hmac-sha256\" is accepted")
    created, expires = params.get("created"), params.get("expires", None)
    if not isinstance(created, int) or isinstance(created, bool):
        raise SignatureError("bad_signature_input", "the signature has no integer 'created'")
    if created > now + CLOCK_SKEW_S:
        raise SignatureError("signature_expired", "the signature was created in the future")
    if now - created > max_age_s:
        raise SignatureError("signature_expired",
                             f"the signature is older than {max_age_s:g} s")
    if expires is not None and (not isinstance(expires, int) or expires < now):
        raise SignatureError("signature_expired", "the signature has expired")
    nonce = params.get("nonce")
    if not isinstance(nonce, str) or not 0 < len(nonce) <= _MAX_NONCE_CHARS:
        raise SignatureError("bad_signature_input", "the signature has no nonce")
    return nonce


def _signature_base(signed: _Signed, lookup: Callable[[str], str | None]) -> bytes:
    lines = []
    for name in signed.components:
        if name.startswith("@") and name not in _DERIVED:
            raise SignatureError("bad_signature_input",
                                 f"derived component {name!r} is not supported")
        value = lookup(name)
        if value is None:
            raise SignatureError("missing_component", f"the request has no {name!r}")
        lines.append(f'"{name}": {value}\n')
    lines.append(f'"@signature-params": {signed.base_params}')
    return "".join(lines).encode()


def verify_hmac_signature(
    *,
    signature_input: str | None,
    signature: str | None,
    lookup: Callable[[str], str | None],
    secret: bytes,
    keyid: str,
    required: Sequence[str],
    max_age_s: float,
    now: float,
    nonces: NonceCache,
) -> None:
    """Check a request's first HMAC-SHA256 signature (see the module doc); SignatureError if not.

    ``lookup(name)`` gives a component's value: ``@request-target`` and ``@authority`` for the
    derived ones, a header's value (trimmed, repeated fields joined with ``", "``) for a
    lower-case header name, None when the request has none.
    """
    signed = _first_signature(signature_input, signature)
    missing = [name for name in required if name not in signed.components]
    if missing:
        raise SignatureError("missing_component",
                             f"the signature does not cover {', '.join(missing)}")
    nonce = _check_params(signed, keyid=keyid, max_age_s=max_age_s, now=now)
    expected = hmac.new(secret, _signature_base(signed, lookup), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signed.mac):
        raise SignatureError("bad_signature", "the signature does not match")
    nonces.add(nonce, now)
