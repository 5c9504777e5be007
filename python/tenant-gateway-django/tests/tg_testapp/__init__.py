"""A test-only django-tenants app whose tables have awkward names (for trigger SQL tests)."""
