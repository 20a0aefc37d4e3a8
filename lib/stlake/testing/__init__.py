"""Helpers for tests and local demos (a real S3 server; no mocks)."""
