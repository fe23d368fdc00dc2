"""Observability on top of the worker and the client: Prometheus metrics
(``prometheus``, the ``pgjobs[prometheus]`` extra), the queue-wide exporter
(``exporter``), OpenTelemetry spans (``tracing``, the ``pgjobs[otel]`` extra) and JSON
log lines (``logs``). Each module is imported only when used; this package imports
nothing of them. All of them are built on the public extension points: middleware,
lifecycle events and probes (``pgjobs.core.hooks``)."""
