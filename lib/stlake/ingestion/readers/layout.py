"""The declaration every reader module makes once: ``LAYOUT = Layout(...)``.

A layout is a way slides are laid out on disk (a release, a Space Ranger output, ...). Its
declaration says everything the rest of stlake needs to know about it: its name (manifests, CLI,
``slides.layout``), the technologies it can hold, the file roles it reads, how a scanned folder is
recognised, how a manifest entry's paths are completed, and how a slide is read. The registry in
:mod:`stlake.ingestion.readers` is built from these declarations; discovery, the CLI and the
synthetic generator's tests take their layout lists from it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from stlake.ingestion.readers.common import ReaderOptions
from stlake.ingestion.records import SlideRecord, SlideRef

#: A scanned folder (its URI and the names it lists) -> the slides it is (or holds), or None.
Identify = Callable[[str, list[str]], Optional[list[SlideRef]]]
#: A manifest entry's ref (``paths`` = ``root`` if given + explicit roles) and a cache shared by the
#: manifest's entries -> the ref with every role it can find filled in.
Complete = Callable[[SlideRef, dict], SlideRef]
#: A slide ref -> its record (coordinates, scale, image and expression sources); raises ``SlideError``.
Read = Callable[[SlideRef, ReaderOptions], SlideRecord]


@dataclass(frozen=True)
class Layout:
    """One input layout, declared by its reader module."""

    name: str
    technologies: tuple[str, ...]  # what ``SlideRef.technology`` may be; the first is the default
    roles: tuple[str, ...]  # file roles a manifest may give for this layout
    summary: str  # one line for ``--help`` and the docs
    identify: Identify
    complete: Complete
    read: Read

    def default_technology(self) -> Optional[str]:
        """The technology when a layout holds only one; None when it depends on the slide."""
        return self.technologies[0] if len(self.technologies) == 1 else None
