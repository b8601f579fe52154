"""WordNet for NLTK from Debian's files: copied (not linked) with the lexnames table NLTK opens
first, and loadable by a fresh NLTK pointed at the copy."""

import os
import subprocess
import sys

import pytest

from capmill.eval.wordnet import DEBIAN_DIR, LEXNAMES, install_from_debian, lexnames_text


def test_lexnames_are_wordnet_3_0s():
    lines = lexnames_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[44] == "44\tadj.ppl\t3" and len(set(LEXNAMES)) == 45


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's wordnet-base is not installed (bash scripts/system-deps.sh)")
def test_debian_files_feed_nltk(tmp_path):
    folder = install_from_debian(root=tmp_path)
    assert folder == tmp_path / "corpora" / "wordnet"
    assert all(not (folder / f).is_symlink() and (folder / f).is_file() for f in os.listdir(folder))
    code = ("from nltk.corpus import wordnet as wn; from nltk.stem import WordNetLemmatizer as L; "
            "print(wn.synsets('automobile')[0].name(), L().lemmatize('buildings', 'n'))")
    env = {**os.environ, "NLTK_DATA": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["car.n.01", "building"]
    assert install_from_debian(root=tmp_path) == folder  # a second copy finds the first in place
