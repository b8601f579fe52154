"""WordNet for CAPTURE's synonym pass and lemmas, offline.

NLTK reads WordNet 3.0 from `NLTK_DATA/corpora/wordnet/`. Where NLTK's own copy is missing, the
Debian packages `wordnet-base` and `wordnet-sense-index` (installed by `scripts/system-deps.sh`)
hold the same database in `/usr/share/wordnet`, without the `lexnames` table NLTK opens first;
`ensure_wordnet` copies those files (NLTK does not follow symbolic links to them) into
`$NLTK_DATA` (its first folder) or else `~/.cache/capmill/nltk_data`, writes `lexnames` (the 45
lexicographer files of WordNet 3.0, a fixed list), and puts that folder on NLTK's path. It does
this once; later calls find the copy.

    python -m capmill.eval.wordnet        # the copy, ahead of time (e.g. in a container build)
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

from capmill.errors import SetupError

DEBIAN_DIR = Path("/usr/share/wordnet")
HELP = ("WordNet is not installed for NLTK: `apt-get install wordnet-base wordnet-sense-index` (capmill copies "
        "it for NLTK on first use; `bash scripts/system-deps.sh` does this), or `python -c \"import nltk; "
        "nltk.download('wordnet')\"` with network access")
# WordNet 3.0's lexicographer files in number order (lexnames(5WN)); the category is 1 noun, 2
# verb, 3 adjective, 4 adverb.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
# The files NLTK's WordNet reader opens (lexnames is written, not copied).
_FILES = ("index.noun", "index.verb", "index.adj", "index.adv", "data.noun", "data.verb", "data.adj", "data.adv",
          "noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense", "cntlist.rev")


def data_root() -> Path:
    first = os.environ.get("NLTK_DATA", "").split(os.pathsep)[0]
    if first:
        return Path(first)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "capmill" / "nltk_data"


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def install_from_debian(source: Path = DEBIAN_DIR, root: Path | None = None) -> Path:
    """Copy Debian's WordNet files to `root/corpora/wordnet` (plus `lexnames`); the folder."""
    root = root or data_root()
    dest = root / "corpora" / "wordnet"
    missing = [f for f in _FILES if not (source / f).is_file()]
    if missing:
        raise SetupError(f"{source} lacks {', '.join(missing)}; {HELP}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=dest.parent))
    try:
        for name in _FILES:
            shutil.copyfile(source / name, scratch / name)  # real files: NLTK does not read through links
        (scratch / "lexnames").write_text(lexnames_text(), encoding="utf-8")
        try:
            os.rename(scratch, dest)
        except OSError:
            if not (dest / "lexnames").is_file():  # another process won the race only if it finished
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest


def _loads() -> bool:
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
        return True
    except LookupError:
        return False


@functools.cache
def ensure_wordnet() -> None:
    """Make `nltk.corpus.wordnet` loadable (see the module docstring) or raise SetupError."""
    try:
        import nltk
    except ImportError:
        raise SetupError("WordNet needs NLTK: `pip install 'capmill[eval]'`") from None
    root = str(data_root())
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    if _loads():
        return
    if not (data_root() / "corpora" / "wordnet" / "lexnames").is_file():
        if not DEBIAN_DIR.is_dir():
            raise SetupError(HELP)
        install_from_debian()
    from nltk.corpus import wordnet

    wordnet._unload()  # the failed attempt left the lazy loader half set up
    if not _loads():
        raise SetupError(HELP)


class WordNet:
    """Lemmas and synonym sets, cached per word (a corpus repeats its words)."""

    def __init__(self):
        ensure_wordnet()
        from nltk.corpus import wordnet
        from nltk.stem import WordNetLemmatizer

        self._wn = wordnet
        self._lemmatizer = WordNetLemmatizer()
        self.noun = functools.lru_cache(maxsize=None)(lambda w: self._lemmatizer.lemmatize(w, wordnet.NOUN))
        self.adjective = functools.lru_cache(maxsize=None)(lambda w: self._lemmatizer.lemmatize(w, wordnet.ADJ))

    @functools.lru_cache(maxsize=None)  # noqa: B019 - one instance per evaluation
    def synonyms(self, word: str) -> frozenset[str]:
        """Every lemma name of every synset of `word` (spaces as underscores, as WordNet spells)."""
        return frozenset(lemma.name() for synset in self._wn.synsets(word) for lemma in synset.lemmas())


def main() -> int:
    try:
        ensure_wordnet()
    except SetupError as e:
        print(f"capmill.eval.wordnet: {e}", file=sys.stderr)
        return 1
    print(f"WordNet is loadable by NLTK (copied under {data_root()} when it came from {DEBIAN_DIR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
