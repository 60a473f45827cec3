"""Hand-off to the city's dispatch backend and the status sync back.

``service.Dispatcher`` confirms and dispatches cases (through the durable outbox in
``hotline/store/outbox.py``), ``forwarder`` delivers work orders to the configured backend, ``events``
and ``poller`` bring the backend's status changes back onto the case.
"""
