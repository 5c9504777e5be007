"""Views of the public schema's URLconf."""

from django.db import connection
from django.http import HttpRequest, JsonResponse


def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "schema": connection.schema_name,
            "tenant": request.tenant.schema_name,  # type: ignore[attr-defined]
            "urlconf": "public",
        }
    )
