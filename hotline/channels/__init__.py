"""Doors into the hotline: thin adapters that turn platform traffic into InboundMessage records."""
