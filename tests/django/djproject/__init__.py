"""A django-tenants project behind Tenant Gateway, for the gateway's end-to-end tests."""
