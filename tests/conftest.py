import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

# small ops dominate at test sizes; one thread keeps the suite predictable on a busy 2-core machine
import torch  # noqa: E402
torch.set_num_threads(1)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (a fresh clone has no ../shared)")
    return SHARED_DATA
