"""Exports on the writer contract: temporaries, commit records, resume after a kill, one export per
folder; and the checks of the requested mix against what the run wrote."""

import json
import os

import pytest

from capmill.cli.main import main
from capmill.config import parse_config
from capmill.errors import ConfigError, OutputConflictError
from capmill.export import ExportReport, export_config, export_run
from capmill.export.targets import ClipExporter
from capmill.readers.run_output import RunOutputInput
from capmill.run import run
from capmill.testing import write_webdataset
from tests.conftest import make_config


def _run(root, name, stages, **output):
    cfg = make_config(root / "data", root / name, stages=stages)
    cfg["output"].update(output)
    assert run(parse_config(cfg), progress=False).ok
    return root / name


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """Three runs over the same data: Revisit formats; VeCLIP with scripted rejections; ssc only."""
    root = tmp_path_factory.mktemp("exports")
    write_webdataset(root / "data", shards=2, per_shard=6)
    revisit = _run(root, "revisit", [{"type": "caption", "formats": ["ssc", "dsc", "dsc_plus"],
                                      "backend": {"type": "fake", "words": 30}}], text_field="dsc")
    refusals = ["I'm sorry, I can't help with that."] * 4  # 4 refusals; the guards may reject more
    veclip = _run(root, "veclip", [
        {"type": "caption", "formats": ["ssc"], "backend": {"type": "fake"}},
        {"type": "fuse", "template": "veclip", "caption": "ssc",
         "backend": {"type": "fake", "responses": refusals}},
    ], text_field="veclip")
    return {"revisit": revisit, "veclip": veclip, "root": root}


def _snapshot(folder):
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != "_export.json":
            data = path.read_bytes()
            files[rel] = json.loads(data) | {"seconds": 0} if rel.startswith("_stats/") else data
    return files


def test_export_resumes_after_a_kill_and_ends_as_an_uninterrupted_one(outs, tmp_path, monkeypatch):
    run_out = str(outs["revisit"])
    whole = tmp_path / "whole"
    export_run(run_out, export_config("clip"), str(whole))

    killed = tmp_path / "killed"
    real = ClipExporter.write
    calls = {"n": 0}

    def dies_in_the_second_shard(self, writer, sample, image, ext):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt  # Ctrl-C in the middle of shard 00001
        return real(self, writer, sample, image, ext)

    monkeypatch.setattr(ClipExporter, "write", dies_in_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        export_run(run_out, export_config("clip"), str(killed))
    monkeypatch.undo()
    assert sorted(os.listdir(killed / "_stats")) == ["00000.json"] and not (killed / "00001.tar").exists()
    assert not [n for n in os.listdir(killed) if ".tmp-" in n]  # the interrupted shard removed its temporary
    committed = (killed / "00000.tar").stat().st_mtime_ns
    (killed / ".00001.tar.tmp-deadbeef").write_bytes(b"half a tar")  # what a SIGKILL would leave
    report = export_run(run_out, export_config("clip"), str(killed))
    assert report.shards_reused == 1 and report.written == 12
    assert (killed / "00000.tar").stat().st_mtime_ns == committed  # the committed shard was not redone
    assert _snapshot(killed) == _snapshot(whole)
    manifest = json.loads((killed / "_export.json").read_text())
    assert manifest["complete"] is True and manifest["written"] == 12


def test_llava_export_resumes_and_assembles_every_shard(outs, tmp_path):
    run_out = str(outs["revisit"])
    out = tmp_path / "mllm"
    export_run(run_out, export_config("mllm"), str(out))
    first = json.loads((out / "llava.json").read_text())
    (out / "_stats" / "00001.json").unlink()
    (out / "llava.json").unlink()
    export_run(run_out, export_config("mllm"), str(out))
    records = json.loads((out / "llava.json").read_text())
    assert records == first and len(records) == 12
    assert all((out / r["image"]).is_file() and r["image"].startswith(("images/00000/", "images/00001/")) for r in records)


def test_one_folder_holds_one_export(outs, tmp_path, capsys):
    run_out = str(outs["revisit"])
    out = tmp_path / "x"
    export_run(run_out, export_config("clip"), str(out))
    with pytest.raises(OutputConflictError, match="one export"):
        export_run(run_out, export_config("mllm"), str(out))
    with pytest.raises(OutputConflictError):
        export_run(run_out, export_config("clip", seed=1), str(out))  # another mix draw is another export
    assert main(["export", run_out, "--target", "mllm", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", run_out, "--target", "mllm", "--out", str(out), "--force"]) == 0
    assert not list(out.glob("*.tar")) and (out / "llava.json").is_file()
    # Neither a run output nor a folder of other files is ever written into.
    with pytest.raises(OutputConflictError, match="run output"):
        export_run(run_out, export_config("clip"), str(outs["veclip"]))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputConflictError, match="not a capmill export"):
        export_run(run_out, export_config("clip"), str(tmp_path / "mine"))


def test_mistyped_and_missing_captions_are_refused_before_anything_is_written(outs, tmp_path, capsys):
    veclip = str(outs["veclip"])
    with pytest.raises(ConfigError, match=r"'dscplus'.*its captions are: dsc, dsc_plus, ssc"):
        export_run(str(outs["revisit"]), export_config("clip", 0, ["mix.synthetic=[dscplus]"]), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"did you mean 'dsc_plus'"):
        export_run(str(outs["revisit"]), export_config("clip", 0, ["mix.synthetic=[dscplus]"]), str(tmp_path / "a"))
    # The dense-caption instruction must never be paired with AltTexts for every sample.
    assert main(["export", veclip, "--target", "mllm", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "dsc_plus" in err and "ssc, veclip" in err and not (tmp_path / "m").exists()
    # A default name the run lacks is left out (with a note) as long as another remains.
    report = export_run(veclip, export_config("clip"), str(tmp_path / "c"))
    assert report.text_source.keys() <= {"alt_text", "ssc", "alt_text (mix fallback: no synthetic caption)"}
    assert any("dsc" in note for note in report.notes)


def test_the_report_gives_the_realised_mix_per_text_source(outs, tmp_path):
    report = export_run(str(outs["revisit"]), export_config("clip"), str(tmp_path / "c"))
    text = report.render()
    assert report.requested == {"ssc": 0.25, "dsc": 0.25, "alt_text": 0.5}
    for name in ("alt_text", "ssc", "dsc"):
        n = report.text_source[name]
        assert f"{100 * n / 12:.1f}%" in next(line for line in text.splitlines() if line.strip().startswith(name))
    assert report.synthetic == report.text_source["ssc"] + report.text_source["dsc"] and report.degenerate is None
    degenerate = ExportReport("clip", samples=5, written=5, requested={"ssc": 0.5, "alt_text": 0.5})
    assert "not one sample had one" in degenerate.degenerate and "FAILED" in degenerate.render()


@pytest.mark.parametrize("fallback", [None, "ssc", "alt_text", "drop"])
def test_veclip_fallback_is_counted_per_source_and_configurable(outs, tmp_path, fallback):
    veclip = str(outs["veclip"])
    reader = RunOutputInput(path=veclip).build()
    samples = {s.key: s for shard in reader.shards() for s in reader.read(shard)}
    rejected = {k for k, s in samples.items() if s.captions["veclip"].meta.get("fallback")}
    n = len(rejected)
    assert 4 <= n < 12
    sets = ["mix.synthetic=[veclip]", "mix.p_synthetic=1.0"] + ([f"mix.fallback={fallback}"] if fallback else [])
    report = export_run(veclip, export_config("clip", 0, sets), str(tmp_path / "v"))
    label = {None: "veclip (fusion fallback: its input kept)", "ssc": "ssc (for veclip: fusion fallback)",
             "alt_text": "alt_text (for veclip: fusion fallback)"}
    if fallback == "drop":
        assert report.skipped["veclip (fusion fallback, dropped)"] == n and report.written == 12 - n
    else:
        assert report.text_source[label[fallback]] == n and report.text_source["veclip"] == 12 - n
    assert "fusion fallback" in report.render()
    import tarfile

    texts = {}
    for shard in ("00000", "00001"):
        with tarfile.open(tmp_path / "v" / f"{shard}.tar") as tar:
            for m in tar:
                if m.name.endswith(".txt"):
                    texts[m.name[:-4]] = tar.extractfile(m).read().decode()
    for key in rejected:
        expected = {None: samples[key].captions["ssc"].text, "ssc": samples[key].captions["ssc"].text,
                    "alt_text": samples[key].alt_text, "drop": None}[fallback]
        assert texts.get(key) == expected


def test_recipe_veclip_makes_the_fallback_explicit(outs, tmp_path):
    assert main(["export", str(outs["veclip"]), "--recipe", "veclip", "--out", str(tmp_path / "v")]) == 0
    manifest = json.loads((tmp_path / "v" / "_export.json").read_text())
    mix = manifest["config"]["mix"]
    assert (mix["p_synthetic"], mix["synthetic"], mix["fallback"]) == (0.5, ["veclip"], "ssc")
    assert set(manifest["text_source"]) <= {"alt_text", "veclip", "ssc (for veclip: fusion fallback)"}
    assert sum(manifest["text_source"].values()) == 12


def test_tldr_export_recipe_writes_the_published_training_text(outs, tmp_path):
    run_out = str(outs["revisit"])
    assert main(["export", run_out, "--recipe", "tldr", "--out", str(tmp_path / "t")]) == 0
    reader = RunOutputInput(path=run_out).build()
    samples = {s.key: s for shard in reader.shards() for s in reader.read(shard)}
    import tarfile

    with tarfile.open(tmp_path / "t" / "00000.tar") as tar:
        txts = {m.name[:-4]: tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")}
    assert len(txts) == 6
    for key, text in txts.items():
        assert text == f"{samples[key].alt_text}; {samples[key].captions['ssc'].text}"


def test_kohya_folders_hold_the_chosen_caption(outs, tmp_path):
    run_out = str(outs["revisit"])  # its output.text_field is dsc
    report = export_run(run_out, export_config("diffusion", 0, ["diffusion_format=sidecar", "repeats=10"]),
                        str(tmp_path / "k"))
    assert report.text_source == {"dsc": 12} and report.requested == {"dsc": 1.0}
    assert sorted(p.name for p in (tmp_path / "k").iterdir() if p.is_dir() and not p.name.startswith("_")) == [
        "10_00000", "10_00001"]
    reader = RunOutputInput(path=run_out).build()
    samples = {s.key: s for shard in reader.shards() for s in reader.read(shard)}
    for txt in (tmp_path / "k" / "10_00000").glob("*.txt"):
        assert txt.read_text() == samples[txt.stem].captions["dsc"].text
        assert txt.with_suffix(".jpg").is_file()
    mixed = export_run(run_out, export_config("diffusion", 0, ["diffusion_format=sidecar", "mix.p_synthetic=0.5"]),
                       str(tmp_path / "mixed"))
    assert set(mixed.text_source) == {"dsc", "alt_text"}  # AltTexts only when asked for
    with pytest.raises(ConfigError, match="sidecar"):
        export_config("diffusion", 0, ["repeats=3"])
    with pytest.raises(ConfigError, match=r"\{shard\}"):
        export_config("diffusion", 0, ["diffusion_format=sidecar", "folder=images"])


def test_joined_texts_are_reported_against_what_was_asked(outs, tmp_path):
    report = export_run(str(outs["revisit"]), export_config("clip", 0, ["mix.p_synthetic=1.0", "mix.synthetic=[ssc]",
                                                                        "mix.join_alt_text=true"]), str(tmp_path / "j"))
    assert report.requested == {"alt_text+ssc": 1.0} and report.text_source == {"alt_text+ssc": 12}
    line = next(line for line in report.render().splitlines() if line.strip().startswith("alt_text+ssc"))
    assert line.split()[-2:] == ["100.0%", "100.0%"]


def test_captions_of_outputs_without_caption_counts_are_read_from_their_columns(outs, tmp_path):
    import shutil

    from capmill.export import known_captions

    old = tmp_path / "old"
    shutil.copytree(outs["revisit"], old)
    for path in (old / "_stats").glob("*.json"):
        stats = json.loads(path.read_text())
        stats.pop("captions")
        path.write_text(json.dumps(stats))
    assert known_captions(str(old)) == {"ssc", "dsc", "dsc_plus"}
