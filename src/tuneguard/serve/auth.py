"""API keys per tenant: kept only as sha256 hashes, looked up by hash, never logged.

Keys come from a keys file (YAML: tenant -> list of ``sha256:<hex>`` hashes; ``tuneguard serve-key`` adds one)
and from the environment (``TUNEGUARD_API_KEYS="acme=KEY,globex=KEY"``, hashed as soon as they are read). A
key is a random 256-bit token, so a plain sha256 is the right hash (as for GitHub or Stripe tokens); a slow
password hash would only slow every request down.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import yaml

from tuneguard.serve.engine import atomic_write
from tuneguard.serve.policy import NAME_PATTERN

KEYS_ENV = "TUNEGUARD_API_KEYS"
KEY_PREFIX = "tg-"
HASH_PREFIX = "sha256:"


class KeysError(ValueError):
    """A keys file or TUNEGUARD_API_KEYS entry that cannot be used; never contains a key."""


def hash_key(key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    """A fresh API key: 'tg-' and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """Maps the hash of a presented key to its tenant."""

    def __init__(self, tenants_by_hash: Mapping[str, str]) -> None:
        self._tenants = dict(tenants_by_hash)

    @classmethod
    def load(cls, keys_file: str | Path | None, environ: Mapping[str, str] = os.environ) -> KeyRing:
        by_hash: dict[str, str] = {}
        if keys_file is not None:
            for tenant, hashes in read_keys_file(Path(keys_file)).items():
                by_hash.update(dict.fromkeys(hashes, tenant))
        for entry in filter(None, (e.strip() for e in environ.get(KEYS_ENV, "").split(","))):
            tenant, sep, key = entry.partition("=")
            if not sep or not key:
                raise KeysError(f"{KEYS_ENV}: expected tenant=key entries separated by commas")
            by_hash[hash_key(key)] = _tenant_name(tenant, KEYS_ENV)
        if not by_hash:
            raise KeysError(f"no API keys: set keys_file in the policy (`tuneguard serve-key`) or {KEYS_ENV}")
        return cls(by_hash)

    def tenant(self, key: str | None) -> str | None:
        """The tenant a presented key belongs to, or None."""
        return self._tenants.get(hash_key(key)) if key else None

    @property
    def tenants(self) -> set[str]:
        return set(self._tenants.values())


def read_keys_file(path: Path) -> dict[str, list[str]]:
    """Tenant -> key hashes; a plain key in the file (not a hash) is refused."""
    if not path.is_file():
        raise KeysError(f"keys file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise KeysError(f"{path}: expected a mapping of tenant -> list of key hashes")
    out: dict[str, list[str]] = {}
    for tenant, hashes in data.items():
        name = _tenant_name(str(tenant), str(path))
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            raise KeysError(f"{path}: {name}: expected a list of '{HASH_PREFIX}<hex>' key hashes")
        for h in hashes:
            if not (h.startswith(HASH_PREFIX) and len(h) == len(HASH_PREFIX) + 64):
                raise KeysError(f"{path}: {name}: holds something that is not a key hash; the file keeps hashes only")
        out[name] = list(hashes)
    return out


def add_key(path: Path, tenant: str) -> str:
    """Create a key for ``tenant``, append its hash to the keys file (created if missing); return the key."""
    name = _tenant_name(tenant, "tenant")
    keys = read_keys_file(path) if path.exists() else {}
    key = new_api_key()
    keys.setdefault(name, []).append(hash_key(key))
    atomic_write(path, yaml.safe_dump(keys, sort_keys=True).encode("utf-8"))
    return key


def _tenant_name(name: str, where: str) -> str:
    if not NAME_PATTERN.match(name):
        raise KeysError(f"{where}: tenant name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    return name


def bearer_key(authorization: str | None) -> str | None:
    """The key of an 'Authorization: Bearer KEY' header."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None
