"""Tenant app: each tenant's schema has its own notes."""
