"""Strict loading of gateway.yaml, policy packs and the tenant registry into core values."""
