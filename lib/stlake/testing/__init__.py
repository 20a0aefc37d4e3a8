"""Helpers for tests, benchmarks and local demos.

A real S3 server (``s3server``) and small lakes of known content (``lake``).
"""
