"""rnnjax._malloc.malloc_for: the benchmarks' --malloc switch."""

import sys

from rnnjax._malloc import SETTINGS, malloc_for


def test_default_leaves_glibc_alone_and_says_so():
    assert malloc_for("default") == {"applied": False, "settings": {},
                                     "reason": "--malloc default"}


def test_tuned_applies_the_settings_on_linux():
    r = malloc_for("tuned")  # what the rnnjax command does first thing anyway
    if sys.platform.startswith("linux"):
        assert r == {"applied": True, "settings": SETTINGS, "reason": "mallopt"}
    else:
        assert r["applied"] is False and r["reason"].startswith("not linux")
