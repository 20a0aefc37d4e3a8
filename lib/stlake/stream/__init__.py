"""Stream the lake into PyTorch: Petastorm over a Delta snapshot, decoded tiles + dense panel expression.

    from stlake.stream import StreamSpec, make_loader
    spec = StreamSpec(lake="./lake", panel_name="hvg256", normalize="normalize_total_log1p",
                      image_size=224, batch_size=256, cur_shard=rank, shard_count=world_size)
    with make_loader(spec) as loader:
        for batch in loader:   # {"image": B x 3 x S x S, "expression": B x G, "slide_id", "spot_id", "label"}
            ...

The ``pairs`` table it reads is built by :func:`stlake.derived.pairs.build_pairs` (``stlake pairs``); stored
panels such as ``hvg256`` by :func:`stlake.derived.hvg.compute_hvg` (``stlake hvg``). torch, OpenCV and
Petastorm are imported on first use, so ``stlake.cli`` stays light.
"""
from stlake.lazy import lazy_exports
from stlake.stream.spec import StreamSpec

__getattr__ = lazy_exports(__name__, {
    "make_loader": "stlake.stream.reader", "StreamLoader": "stlake.stream.reader",
    "resolve_panel": "stlake.stream.panels", "Panel": "stlake.stream.panels"})

__all__ = ["Panel", "StreamLoader", "StreamSpec", "make_loader", "resolve_panel"]
