"""The extension's type stubs (meshckpt/_meshckpt.pyi) match its bindings, and say what the
package's types are."""

import os
import subprocess
import sys
from pathlib import Path

import meshckpt as mc

HERE = Path(__file__).resolve().parent


def test_stubs_match_the_bindings():
    stubs = HERE.parent / "meshckpt" / "_meshckpt.pyi"
    r = subprocess.run([sys.executable, str(HERE.parent / "tools" / "stubgen.py"), "--check", str(stubs)],
                       env=dict(os.environ), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = stubs.read_text()
    assert "class Variable(Trackable):" in text
    assert "def from_shards(shards: object, layout: Layout, global_shape: List[int]" in text


def test_the_package_ships_its_stubs_and_marker():
    installed = Path(mc.__file__).resolve().parent
    assert (installed / "_meshckpt.pyi").is_file()
    assert (installed / "py.typed").is_file()
