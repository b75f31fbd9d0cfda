"""Prometheus exporter for DialogTech LeadFlow pay-per-call history."""

__version__ = "0.1.0"
