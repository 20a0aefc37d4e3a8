"""Helpers for tests, benchmarks and local demos: a real S3 server (`s3server`), small lakes of known content (`lake`)."""
