"""The controller's HTTP edge: admission of connections, the request handler, bodies and dispatch."""
