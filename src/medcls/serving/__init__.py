"""Serving a model: the FastAPI web service and its web page (``medcls serve``)."""
