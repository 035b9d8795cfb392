"""Fixtures for moto server and the HTTP-endpoint receiver."""
