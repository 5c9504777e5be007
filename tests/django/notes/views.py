"""Views of the tenant URLconf."""

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .models import Note


@require_GET
def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "schema": connection.schema_name,
            "tenant": request.tenant.schema_name,  # type: ignore[attr-defined]
            "urlconf": "tenant",
            "host": request.META.get("HTTP_HOST"),
            "notes": [n.text for n in Note.objects.order_by("id")],
        }
    )


@csrf_exempt
@require_POST
def notes(request: HttpRequest) -> JsonResponse:
    text = request.body.decode("utf-8", "replace")
    note = Note.objects.create(text=text)
    return JsonResponse(
        {"id": note.id, "text": note.text, "schema": connection.schema_name}, status=201
    )
