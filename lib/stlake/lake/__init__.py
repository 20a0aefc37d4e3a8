"""The lake layer: table schemas, storage (local or ``s3://``), delta-rs commits, gene harmonisation.

Nothing here starts Spark; every other package reads and writes the lake through these modules.
"""
