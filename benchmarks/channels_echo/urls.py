"""No HTTP views: the project serves only its WebSocket route."""

urlpatterns: list[object] = []
