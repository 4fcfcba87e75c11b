"""The analysis registry: names, versions, docstrings, params models, duplicates."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from ckptlab.analyses.registry import (
    _REGISTRY,
    AnalysisCollision,
    Need,
    NoParams,
    analysis,
    get_analysis,
    registered_analyses,
)


def test_every_shipped_analysis_is_documented_and_versioned():
    known = {n: d for n, d in registered_analyses().items() if d.shipped}  # not test plug-ins
    assert {"saturation", "anisotropy", "singular_entropy"} <= set(known)
    for name, definition in known.items():
        assert definition.origin.source_hash is None, name  # shipped keys follow the version
        assert definition.version >= 1, name
        assert definition.needs, name
        doc = definition.doc
        assert "=" in doc, f"{name}: docstring needs its formula"
        assert any(year in doc for year in ("19", "20")), f"{name}: docstring needs its paper"


def test_weight_only_analyses_need_no_forward_pass():
    assert not get_analysis("singular_entropy").needs_forward_pass
    assert get_analysis("anisotropy").needs_forward_pass
    assert get_analysis("saturation").needs == {Need.TOKEN_NLL}


def test_duplicate_names_are_errors():
    with pytest.raises(
        AnalysisCollision,
        match=r"analysis 'anisotropy' of module .* collides with 'anisotropy' of ckptlab",
    ):

        @analysis(name="anisotropy", version=9, needs={Need.LM_HEAD})
        def again(capture, params):
            """x = y (2024)"""
            return []


def test_registration_requires_a_docstring_and_strict_params():
    with pytest.raises(ValueError, match="docstring"):

        @analysis(name="undocumented", version=1, needs={Need.LM_HEAD})
        def undocumented(capture, params):
            return []

    class Loose(BaseModel):
        x: int = 0

    with pytest.raises(ValueError, match="forbid extra"):

        @analysis(name="loose", version=1, needs={Need.LM_HEAD}, params=Loose)
        def loose(capture, params):
            """x = y (2024)"""
            return []

    assert "undocumented" not in _REGISTRY and "loose" not in _REGISTRY
    assert NoParams.model_config["extra"] == "forbid"


def test_unknown_analysis_names_the_known_ones():
    with pytest.raises(KeyError, match="known: anisotropy"):
        get_analysis("nope")
