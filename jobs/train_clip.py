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
import sys

from stlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
