"""An empty URLconf for the test settings."""

urlpatterns: list[object] = []
