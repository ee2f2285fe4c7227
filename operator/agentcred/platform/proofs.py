"""DPoP proofs as every agentcred verifier takes them -- the token endpoint, gateways'
decisions, the public `Verifier`: checked (rules.dpop), held to the key a token is bound to,
and used once per pod (platform.replay). Server nonces, when asked for, are MACs under the key
ring's `dpop-nonce` key, so any replica judges any replica's nonce.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..rules.dpop import FUTURE_SKEW, MAX_AGE, Covered, Proof, ProofRefused, check_proof, new_nonce, nonce_fresh
from .keys import KeyRing
from .replay import ReplayCache


@dataclass
class ProofChecker:
    keyring: Callable[[], KeyRing] | None = None  # for server nonces; None: nonces are never asked for
    require_nonce: bool = False
    max_age: int = MAX_AGE
    replays: ReplayCache = field(default_factory=ReplayCache)
    clock: Callable[[], float] = time.time

    def _mac(self, message: bytes) -> bytes:
        assert self.keyring is not None
        return self.keyring().mac_key("dpop-nonce").mac(message)

    def nonce(self) -> str | None:
        """A fresh server nonce, or None when nonces are not asked for."""
        return new_nonce(self._mac, self.clock()) if self.require_nonce and self.keyring is not None else None

    def check(self, header: str, covered: Covered, holder: str, bound_to: str | None = None) -> Proof:
        """The proof in `header`, covering `covered`, signed by the key `bound_to` names (when
        the token is bound), never seen before from `holder`; or ProofRefused."""
        now = self.clock()
        nonce_ok = None
        if self.require_nonce and self.keyring is not None:
            nonce_ok = lambda nonce: nonce_fresh(nonce, self._mac, now)  # noqa: E731
        proof = check_proof(header, covered, now, max_age=self.max_age, nonce_ok=nonce_ok)
        if bound_to is not None and proof.jkt != bound_to:
            raise ProofRefused(
                "dpop-key-mismatch", f"the proof is signed by key {proof.jkt}; the token is bound to {bound_to}"
            )
        self.spend(proof, holder, now)
        return proof

    def spend(self, proof: Proof, holder: str, now: float | None = None) -> None:
        """`proof` used once by `holder`; ProofRefused if it was before. A proof that vouches
        for two pods at once (the subject's and an actor's) is spent by both: captured from
        one pod's request, it is not good again under another pod's."""
        now = self.clock() if now is None else now
        seen = self.replays.use(holder, f"{proof.jkt}:{proof.jti}", proof.iat + self.max_age + FUTURE_SKEW + 1, now)
        if seen == "replayed":
            raise ProofRefused("dpop-replayed", f"proof {proof.jti[:64]} was used before: make a fresh one per request")
        if seen == "full":
            raise ProofRefused(
                "dpop-replay-limit",
                f"more proofs from this pod than agentcred remembers within {self.max_age} s: slow down",
            )
