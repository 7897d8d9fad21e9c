"""Procedural synthetic face datasets written in the real on-disk formats of the benchmarks facetrain reads.

:class:`SyntheticFaces` (the ``_target_`` of ``configs/synthetic/``) writes the default training and evaluation data
in the CASIA-WebFace, LFW and YouTube Faces layouts; its companions :class:`facetrain.data.synthetic.ijb.SyntheticIjbc`
and :class:`facetrain.data.synthetic.tinyface.SyntheticTinyFace` write IJB-C- and TinyFace-format evaluation sets.
Every file is a pure function of the seed, so a process pool writes byte-identical files.

Modules, one concern each:

* ``seeds``: the keyed random generators (every kind of person and every stream of draws, allocated in one place);
* ``traits``: identity traits and per-image / per-video-frame nuisances;
* ``painter`` and ``render``: drawing a face from traits and nuisance, then the imaging chain;
* ``names`` and ``pairs``: LFW-style names, identity-disjoint folds and the pairs drawn in them;
* ``jobs`` and ``pool``: one identity's images as a job, and running jobs on a process pool;
* ``store``: a generated directory's manifest, lock and atomic swap;
* ``faces``, ``ijb``, ``tinyface`` (with ``companion``): the sets themselves.
"""

from facetrain.data.synthetic.faces import SyntheticFaces

__all__ = ["SyntheticFaces"]
