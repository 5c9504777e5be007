"""Shared app: the tenants (``Client``) and their host names (``Domain``)."""
