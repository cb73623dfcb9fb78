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
from rnnjax.data.batching import *
from rnnjax.data.download import *
from rnnjax.data.embeddings import *
from rnnjax.data.series import *
from rnnjax.data.streams import *
from rnnjax.data.synthetic import *
from rnnjax.data.text import *

__all__ = [name for module in (synthetic, text, embeddings, series, batching, download, streams)
           for name in module.__all__]
