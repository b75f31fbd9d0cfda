"""Benchmarks of leadflow-exporter (ingest, scrape, memory, API cost): `python -m bench.run`."""
