"""RS256 tokens for the emulated-host tests: a fresh RSA key made in the
test run (never a committed one), its public JWK, and JWTs signed with it,
by `cryptography` and PyJWT (the end-to-end tests get theirs from `warden
token`, which needs a running control plane)."""

from __future__ import annotations

import json

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class RsaKey:
    """An RSA signing key (2048 bits, e = 65537) with its `kid`."""

    def __init__(self, kid: str):
        self.kid = kid
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self._private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def token(self, claims: dict) -> str:
        return jwt.encode(claims, self._private, algorithm="RS256", headers={"kid": self.kid})


def jwks(*keys: RsaKey) -> str:
    return json.dumps({"keys": [k.jwk() for k in keys]})
