"""DPoP (RFC 9449) for an httpx client, on joserfc: nothing here knows agentcred.

Every request carries `Authorization: DPoP <token>` and a fresh proof signed by the client's
key (`DPoP: <jwt>`: `htm`, `htu`, `iat`, `jti`, `ath` = the token's hash, and the server's
nonce when it asked for one, §8/§9). A resource server that answers 403 `insufficient_scope`
naming a scope gets the request again with a token for that scope, exchanged (RFC 8693) from
the token the client holds at the authorization server's token endpoint -- with a proof, so
the new token is bound to the same key.

Neither the `mcp` SDK (its `OAuthToken` takes `token_type: Bearer` only) nor authlib's
clients speak DPoP yet, so this is the client side written against the RFC; the key is a JWK
file (the `dpop.jwk` agentcred writes next to a bound value), read at each use because it
rotates with the value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Generator
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx2
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class StepUpRefused(Exception):
    """The authorization server would not issue the scope a resource server asked for."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _challenge(header: str, name: str) -> str | None:
    found = re.search(rf'{name}="([^"]*)"', header)
    return found.group(1) if found else None


class DPoPKey:
    """A private key from a JWK file, and the proofs it signs."""

    def __init__(self, key_file: str) -> None:
        self.key_file = key_file

    def proof(self, method: str, url: str, access_token: str | None = None, nonce: str | None = None) -> str:
        private = json.loads(Path(self.key_file).read_text())
        key: ECKey | OKPKey | RSAKey = import_key(private)  # type: ignore[assignment]
        alg = private.get("alg") or {"EC": "ES256", "OKP": "Ed25519", "RSA": "PS256"}[private["kty"]]
        public = {name: private[name] for name in ("kty", "crv", "x", "y", "n", "e") if name in private}
        parts = urlsplit(url)
        claims: dict[str, object] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            "iat": int(time.time()),
        }
        if access_token is not None:
            claims["ath"] = _b64url(hashlib.sha256(access_token.encode()).digest())
        if nonce is not None:
            claims["nonce"] = nonce
        header = {"typ": "dpop+jwt", "alg": alg, "jwk": public}
        return jws.serialize_compact(header, json.dumps(claims).encode(), key, algorithms=[alg])


class DPoPAuth(httpx2.Auth):
    """httpx authentication with a DPoP-bound token. `token` gives the token to start from
    (read from its file at each use: it is renewed in place)."""

    requires_response_body = True

    def __init__(self, token: Callable[[], str], key: DPoPKey, token_endpoint: str, resource: str) -> None:
        self.token, self.key, self.token_endpoint, self.resource = token, key, token_endpoint, resource
        self.narrowed: str | None = None  # the token exchanged for the scopes asked for so far
        self.scopes: list[str] = []
        self.nonces: dict[str, str] = {}  # the last DPoP-Nonce each origin gave

    def _origin(self, url: httpx2.URL) -> str:
        return f"{url.scheme}://{url.netloc.decode()}"

    def _sign(self, request: httpx2.Request, token: str) -> None:
        nonce = self.nonces.get(self._origin(request.url))
        request.headers["Authorization"] = f"DPoP {token}"
        request.headers["DPoP"] = self.key.proof(request.method, str(request.url), token, nonce)

    def _exchange(self, scope: str, nonce: str | None = None) -> httpx2.Request:
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": self.token(),
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": self.resource,
            "scope": scope,
        }
        return httpx2.Request(
            "POST",
            self.token_endpoint,
            content=urlencode(form).encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "DPoP": self.key.proof("POST", self.token_endpoint, nonce=nonce),
            },
        )

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        token = self.narrowed or self.token()
        self._sign(request, token)
        response = yield request
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code == 401 and "use_dpop_nonce" in challenge and response.headers.get("DPoP-Nonce"):
            self.nonces[self._origin(request.url)] = response.headers["DPoP-Nonce"]
            self._sign(request, token)
            response = yield request
            challenge = response.headers.get("WWW-Authenticate", "")
        scope = _challenge(challenge, "scope") if response.status_code == 403 else None
        if scope is None or "insufficient_scope" not in challenge:
            return
        wanted = " ".join(dict.fromkeys([*self.scopes, *scope.split()]))  # what it had, and this
        granted = yield self._exchange(wanted)
        if granted.status_code == 400 and granted.json().get("error") == "use_dpop_nonce":
            granted = yield self._exchange(wanted, granted.headers.get("DPoP-Nonce"))
        if granted.status_code != 200:
            raise StepUpRefused(f"Token exchange failed ({granted.status_code}): {granted.text}")
        answer = granted.json()
        if answer.get("token_type", "").lower() != "dpop":
            raise StepUpRefused(f"the authorization server issued a {answer.get('token_type')} token, not a DPoP one")
        self.narrowed, self.scopes = str(answer["access_token"]), wanted.split()
        self._sign(request, self.narrowed)
        yield request
