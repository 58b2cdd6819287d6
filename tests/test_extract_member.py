"""scripts/extract_member.py: one network of the shipped ensemble as a model of its own (its clean top)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from soundwatch.data.scenes import read_audio
from soundwatch.models.checkpoint import DEFAULT_MODEL, load_checkpoint
from tests.conftest import ESC50_DIR, REPO

SCRIPT = REPO / "scripts" / "extract_member.py"


def test_an_extracted_member_scores_as_that_member_of_the_ensemble_and_a_missing_one_is_refused(tmp_path):
    out = tmp_path / "member1.safetensors"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(DEFAULT_MODEL), "1", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    one, card = load_checkpoint(out)
    shipped, shipped_card = load_checkpoint(DEFAULT_MODEL)
    assert card.members == 1 and card.classes == shipped_card.classes[:-1]  # no background class
    assert card.extra["extracted"]["member"] == 1 and card.extra["extracted"]["seed"] == 1
    clips = [read_audio(p) for p in sorted((ESC50_DIR / "audio").glob("1-*"))[:3]]
    x = torch.from_numpy(np.stack([c[:80000] for c in clips]).astype(np.float32))
    with torch.no_grad():
        mine, _ = one(x)
        theirs, _ = shipped.clean.members[1](x)
        other, _ = shipped.clean.members[0](x)
    assert torch.allclose(mine, theirs, atol=1e-5) and not torch.allclose(mine, other, atol=1e-3)
    refused = subprocess.run(
        [sys.executable, str(SCRIPT), str(DEFAULT_MODEL), "2", str(tmp_path / "x.safetensors")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "has no member 2" in refused.stderr and not (tmp_path / "x.safetensors").exists()
