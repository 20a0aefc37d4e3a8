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
from stlake.stream.spec import StreamSpec

_LAZY = {"make_loader": "stlake.stream.reader", "StreamLoader": "stlake.stream.reader",
         "resolve_panel": "stlake.stream.panels", "Panel": "stlake.stream.panels"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stlake.stream' has no attribute {name!r}")


__all__ = ["Panel", "StreamLoader", "StreamSpec", "make_loader", "resolve_panel"]
