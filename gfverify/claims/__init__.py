"""Executable claims of the paper: identities (exact under gradient flow) and tendencies."""

from gfverify.claims.base import CLAIMS, SCHEMA_VERSION, Claim, ClaimResult, register, select_claims

__all__ = ["CLAIMS", "SCHEMA_VERSION", "Claim", "ClaimResult", "register", "select_claims"]
