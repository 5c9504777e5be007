"""Tenant Gateway for django-tenants: trust the gateway's signed tenant stamp.

The package's one job is to let a django-tenants project run behind Tenant
Gateway: :mod:`.stamp` verifies the stamp, :mod:`.middleware` activates the
stamped tenant (instead of django-tenants' Host lookup), and the
``tenant_gateway_triggers`` management command installs the NOTIFY triggers
that keep the gateway's routing cache fresh.
"""

__version__ = "0.1.0"
