"""meshckpt.torch and the Checkpointer on s3:// prefixes, against the Ceph RGW that CTest's s3
fixture starts (tests/s3/rgw.sh); run by ctest as python_s3, with MESHCKPT_RGW_DIR naming the
cluster. Skipped without it (plain test_python)."""

import os
import time

import pytest

torch = pytest.importorskip("torch")
import meshckpt.torch as mt  # noqa: E402

RGW = os.environ.get("MESHCKPT_RGW_DIR")
pytestmark = pytest.mark.skipif(not RGW, reason="needs the s3 fixture's RGW (ctest -L s3)")


@pytest.fixture(autouse=True)
def rgw_env(monkeypatch):
    with open(os.path.join(RGW, "env")) as f:
        for line in f:
            name, _, value = line.strip().partition("=")
            if name:
                monkeypatch.setenv(name, value)


def prefix(what):
    return "s3://meshckpt-test/py-%s-%d-%d" % (what, os.getpid(), time.monotonic_ns())


def test_save_and_load_a_state_dict_on_s3():
    sd = {"w": torch.randn(1024, 1500), "b": torch.arange(10), "h": torch.randn(7, dtype=torch.float16)}
    path = prefix("sd") + "/model"
    assert mt.save(sd, path) == path
    out = {k: torch.zeros_like(v) for k, v in sd.items()}
    mt.load(out, path)
    for k in sd:
        assert torch.equal(out[k], sd[k]), k


def test_checkpointer_keeps_max_to_keep_and_loads_the_latest_on_s3():
    sd = {"w": torch.zeros(64, 64), "step": torch.tensor(0)}
    d = prefix("ck")
    c = mt.Checkpointer(d, max_to_keep=2)
    for step in range(1, 4):
        sd["w"].fill_(step)
        sd["step"].fill_(step)
        c.save(sd, step=step)
    out = {"w": torch.zeros(64, 64), "step": torch.tensor(0)}
    c.load(out)
    assert int(out["step"]) == 3 and float(out["w"][0, 0]) == 3.0


def test_a_second_save_under_a_committed_name_is_refused_on_s3():
    sd = {"w": torch.ones(4)}
    path = prefix("twice") + "/model"
    mt.save(sd, path)
    with pytest.raises(Exception, match="exists"):
        mt.save(sd, path)
