"""The `jwt` source: tokens minted and signed here, revoked through the revocation list.

A credential with `dpop: required` gets each value bound (RFC 9449 `cnf.jkt`) to a P-256 key
made for that pod and that value: the private key is written next to the value in the pod's
own Secret (`<credential>.dpop.jwk`, mounted as `dpop.jwk`) and replaced with it at every
renewal, so the kubelet swaps both at once. The operator keeps only the key's thumbprint, in
the pod's sealed bookkeeping: the pod's identity token is accepted only with a proof by it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
from collections.abc import Callable

from joserfc.jwk import ECKey

from ..api.model import SourceKind
from ..api.pods import PodTask
from ..api.projection import IssuedValue, Subject
from ..platform.fingerprints import Fingerprints
from ..platform.keys import DEFAULT_ALGORITHM, KeyRing, encode_jwt
from ..rules.credentials import CredentialRecord
from ..rules.dpop import jkt
from ..rules.planning import Issue
from .base import Produced
from .claims import credential_grant, token_claims


class JwtSource:
    kind: SourceKind = "jwt"

    def __init__(self, keyring: Callable[[], KeyRing], issuer: str) -> None:
        self._keyring, self._issuer = keyring, issuer
        self._fingerprints = Fingerprints(keyring)

    async def produce(self, task: PodTask, record: CredentialRecord, issue: Issue, now: dt.datetime) -> Produced:
        spec = record.spec
        assert spec is not None and spec.source.jwt is not None
        token_id = secrets.token_urlsafe(16)
        grant = credential_grant(record)
        key, thumbprint = None, None
        if spec.source.jwt.dpop_required:
            private = ECKey.generate_key("P-256", private=True).as_dict(private=True)
            public = {name: private[name] for name in ("kty", "crv", "x", "y")}
            thumbprint = jkt(public)
            grant = dataclasses.replace(grant, jkt=thumbprint)
            key = json.dumps({**private, "alg": "ES256", "use": "sig", "kid": thumbprint}).encode()
        claims = token_claims(
            issuer=self._issuer,
            record=record,
            task=task,
            issued_at=now,
            expires_at=issue.expires_at,
            token_id=token_id,
            grant=grant,
        )
        value = self.sign(record, claims).encode()
        return Produced.of(
            value,
            kind=self.kind,
            record=record,
            issue=issue,
            now=now,
            fingerprint=self._fingerprints(value),
            token_id=token_id,
            key=key,
            jkt=thumbprint,
        )

    def sign(self, record: CredentialRecord, claims: dict[str, object]) -> str:
        spec = record.spec
        assert spec is not None and spec.source.jwt is not None
        return encode_jwt(claims, self._keyring().current(spec.source.jwt.algorithm or DEFAULT_ALGORITHM))

    async def revoked(
        self,
        record: CredentialRecord | None,
        credential: str,
        value: IssuedValue,
        subject: Subject,
        reason: str,
        until: dt.datetime,
    ) -> None:
        """Nothing more to do: the revocation list entry the revoker wrote covers this value
        and every token exchanged from it."""
