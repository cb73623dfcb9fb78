"""Data for rnnjax: synthetic tasks, text, word vectors, time series, batching and downloads.

Everything here is numpy only. This package must never import jax, flax, or any other rnnjax
package (``nn``, ``models``, ``train``...): tasks import data, never the other way round.

Submodules: ``synthetic`` (adding, copy, selective copy, temporal order, parity, addition,
Mackey-Glass), ``text`` (Vocabulary, tokenisers, LM and TSV loaders), ``embeddings`` (GloVe),
``series`` (CSV series, splits, scaling, windows), ``batching`` (padding, bucketing, class balance,
resumable ``BatchIterator``), ``streams`` (named seed streams, ``SyntheticIterator``, fixed eval
sets, builtin texts), ``download`` (named datasets, cache, checksums, offline message).
"""

# Each submodule's __all__ is its public API; the package re-exports all of them.
from rnnjax.data import batching, download, embeddings, series, streams, synthetic, text
from rnnjax.data.batching import *  # noqa: F401,F403
from rnnjax.data.download import *  # noqa: F401,F403
from rnnjax.data.embeddings import *  # noqa: F401,F403
from rnnjax.data.series import *  # noqa: F401,F403
from rnnjax.data.streams import *  # noqa: F401,F403
from rnnjax.data.synthetic import *  # noqa: F401,F403
from rnnjax.data.text import *  # noqa: F401,F403

__all__ = [name for module in (synthetic, text, embeddings, series, batching, download, streams)
           for name in module.__all__]
