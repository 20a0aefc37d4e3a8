"""Reference training job: a CLIP-style tile <-> expression model streamed from the lake.

One process per GPU under torchrun (rank -> the stream's ``cur_shard``, world size -> ``shard_count``;
DDP over NCCL on GPU, gloo on CPU; bf16 autocast on CUDA), or a single process. After training, rank 0
evaluates on held-out slides (image->expression recall@1/5/10, ridge linear probe Pearson r per gene)
and writes ``metrics.json`` next to the checkpoint. Entry point only: the job is ``stlake.train.job``
(also ``stlake train``).

    python jobs/train_clip.py --lake ./lake --steps 200
    torchrun --nproc-per-node 8 jobs/train_clip.py --lake s3://bucket/lake --encoder resnet18 \
        --image-size 224 --batch-size 256 --steps 20000 --checkpoint-dir s3-mounted/ckpt --resume
"""
import os
import sys

_LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")
if _LIB not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, _LIB)

from stlake.train.job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
