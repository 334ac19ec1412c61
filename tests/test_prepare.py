"""Tests for the work-unit build (data/shards.py, data/sources.py, python -m data.prepare): 1 and 2 workers write the
same bytes, kill -9 then rerun equals a clean build, .zst / .gz / JSON-array inputs, corrupt files are one line, the
hub's split filter (locally and through the hub code path on a local folder), SLURM-style shards. No network."""
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from common import UserError
from data import shards, sources
from data.mixture import open_mixture, prepare_mixture
from data.sources import load_documents, source_files

ROOT = Path(__file__).resolve().parents[1]
OMI2_REV = sources.SOURCES["omi2"].revision


def omi2_rows(n, seed=0, tag="train"):
    rng = random.Random(f"{tag}-{seed}")
    return [{"problem": f"{tag} problem {seed}-{i}: " + " ".join(rng.choice(["apples", "pears", "sum", "twice", "7",
                                                                              "42", "of", "the"]) for _ in range(20)),
             "generated_solution": "We add. " * rng.randint(2, 30) + f"\\boxed{{{i}}}",
             "expected_answer": str(i), "problem_source": "augmented_gsm8k"} for i in range(n)]


def write_jsonl(path, rows, opener=open):
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wb") as f:
        for r in rows:
            f.write((json.dumps(r) + "\n").encode())


def omi2_folder(root, n=120):
    """The hub's layout of nvidia/OpenMathInstruct-2: data/train-*.parquet plus the train_1M/2M/5M subsets."""
    data = root / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(omi2_rows(n, 0)), data / "train-00000-of-00002.parquet", row_group_size=20)
    pq.write_table(pa.Table.from_pylist(omi2_rows(n, 1)), data / "train-00001-of-00002.parquet", row_group_size=20)
    for sub in ("train_1M", "train_2M", "train_5M"):
        pq.write_table(pa.Table.from_pylist(omi2_rows(10, 0, tag=sub)), data / f"{sub}-00000-of-00001.parquet")
    return root


def unit_files(root):
    """Every unit file's bytes, by path under tokens/ (the .json without its timing)."""
    out = {}
    for p in sorted(Path(root, "tokens").rglob("*")):
        if p.is_file() and ".build-" not in str(p):
            b = p.read_bytes()
            if p.suffix == ".json" and p.name != "tokenizer.json":
                d = json.loads(b)
                d.pop("seconds", None)
                b = json.dumps(d, sort_keys=True).encode()
            out[str(p.relative_to(root))] = b
    return out


# ------------------------------------------------------------------------------------------------ workers
def test_one_and_two_workers_write_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "UNIT_BYTES", 6000)  # tiny units: row-group and byte-range parts of each file
    src = omi2_folder(tmp_path / "omi2")
    write_jsonl(src / "data" / "train-00002-of-00003.jsonl", omi2_rows(150, 2))
    mix = f"omi2={src}:1.5,syn-omi1:1"
    one = prepare_mixture(mix, 4096, str(tmp_path / "a"), unit=60, workers=1, quiet=True)
    two = prepare_mixture(mix, 4096, str(tmp_path / "b"), unit=60, workers=2, quiet=True)
    a, b = unit_files(tmp_path / "a"), unit_files(tmp_path / "b")
    assert a == b and len([k for k in a if k.endswith(".bin")]) >= 6  # split into parts, byte-identical
    assert any(".part" in k and "jsonl" in k for k in a) and any(".part" in k and "parquet" in k for k in a)
    ma, mb = open_mixture(one), open_mixture(two)
    assert np.array_equal(ma["train"][:], mb["train"][:])
    s = ma["meta"]["sources"]["omi2"]
    assert s["rows"] == 120 + 120 + 150 and s["skipped"] == 0  # the train_1M/2M/5M subsets are not read
    # every line of the split .jsonl is read exactly once across its byte-range parts
    infos = [json.loads(v) for k, v in a.items() if k.endswith(".json") and "jsonl" in k]
    assert len(infos) > 1 and sum(i["rows"] for i in infos) == 150


# ------------------------------------------------------------------------------------------------ kill -9
def test_kill_9_mid_build_then_rerun_equals_a_clean_build(tmp_path):
    mix = "syn-tinygsm:1,syn-omi1:1,syn-omi2:1,syn-finemath:1"
    cmd = [sys.executable, "-m", "data.prepare", "--mix", mix, "--unit", "2500", "--vocab-size", "4096",
           "--workers", "1", "--out", str(tmp_path / "killed")]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline and not list((tmp_path / "killed").rglob("*.json")):
            time.sleep(0.01)
        time.sleep(0.1)  # into the second unit
        assert p.poll() is None, "the build finished before the kill"
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
    done = {q: q.stat().st_mtime_ns for q in (tmp_path / "killed").rglob("*.bin") if ".build-" not in str(q)}
    assert 1 <= len(done) < 4 and not list((tmp_path / "killed").glob("mix-*/meta.json"))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {q: q.stat().st_mtime_ns for q in done} == done  # finished units were not redone
    clean = prepare_mixture(mix, 4096, str(tmp_path / "clean"), unit=2500, workers=2, quiet=True)
    assert unit_files(tmp_path / "killed") == unit_files(tmp_path / "clean")
    killed = r.stdout.strip().splitlines()[-1]
    assert np.array_equal(open_mixture(killed)["train"][:], open_mixture(clean)["train"][:])
    assert not [q for q in (tmp_path / "killed").rglob(".build-*")]  # the killed unit's scratch folder is gone


# ------------------------------------------------------------------------------------------------ formats
def test_zst_gz_and_json_array_inputs_read_the_same_rows(tmp_path):
    rows = omi2_rows(3000)  # over 1 MB: the JSON array reader's buffer slides
    rows[5] = {"problem": "no solution column"}
    plain = tmp_path / "omi2.jsonl"
    write_jsonl(plain, rows)
    write_jsonl(tmp_path / "omi2.jsonl.gz", rows, gzip.open)
    (tmp_path / "omi2.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    array = json.dumps(rows, indent=1).encode()
    (tmp_path / "omi2.json").write_bytes(array)
    (tmp_path / "omi2.json.zst").write_bytes(zstandard.ZstdCompressor().compress(array))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "omi2.parquet", row_group_size=500)
    want = load_documents("omi2", str(plain))
    assert len(want[0]) == 2999 and want[1] == {"rows": 3000, "skipped": 1, "filtered": 0}
    for name in ("omi2.jsonl.gz", "omi2.jsonl.zst", "omi2.json", "omi2.json.zst", "omi2.parquet"):
        assert load_documents("omi2", str(tmp_path / name)) == want, name
    # MetaMathQA ships one JSON array, MetaMathQA-395K.json: found in its folder by the hub's file name
    mm = tmp_path / "MetaMathQA"
    mm.mkdir()
    (mm / "MetaMathQA-395K.json").write_text(json.dumps([{"query": "What is 2+2?", "response": "4"}] * 3))
    (mm / "README.json").write_text("[]")
    assert load_documents("metamathqa", str(mm)) == (["What is 2+2?\n\n4"] * 3, {"rows": 3, "skipped": 0,
                                                                                "filtered": 0})
    d = prepare_mixture(f"omi2={tmp_path / 'omi2.jsonl.zst'}:1", 4096, str(tmp_path / "cache"), quiet=True)
    assert open_mixture(d)["meta"]["sources"]["omi2"]["base_documents"] == 2999


def test_corrupt_files_are_one_line_and_the_rest_is_kept(tmp_path, capsys):
    from data import prepare
    data = tmp_path / "tinygsm" / "data"
    data.mkdir(parents=True)
    rows = [{"question": f"Q{i}: how many?", "code": f"def simple_math_problem() -> int:\n    return {i}"}
            for i in range(300)]
    pq.write_table(pa.Table.from_pylist(rows), data / "train-00000-of-00002.parquet", row_group_size=100)
    good = (data / "train-00000-of-00002.parquet").read_bytes()
    n = len(good)
    bad = data / "train-00001-of-00002.parquet"  # bytes flipped inside a data page: a bad snappy block
    bad.write_bytes(good[:n // 3] + bytes(x ^ 0x5A for x in good[n // 3:n // 3 + 200]) + good[n // 3 + 200:])
    args = ["--mix", f"tinygsm={tmp_path / 'tinygsm'}:1", "--out", str(tmp_path / "cache"), "--workers", "2",
            "--vocab-size", "4096"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        prepare.main(args)
    err = capsys.readouterr().err  # the progress bar, then the error
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "train-00001-of-00002.parquet" in lines[0] and "the build stopped" in lines[0] and "kept" in lines[0]
    built = list((tmp_path / "cache").rglob("*train-00000-of-00002.parquet.json"))
    assert len(built) == 1 and not list((tmp_path / "cache").glob("mix-*"))  # the good unit is kept, no mixture
    bad.unlink()  # fixed: the rerun only writes the manifest
    prepare.main(args)
    assert (tmp_path / "cache").glob("mix-*/meta.json") and built[0].exists()
    # a cut-short parquet (no footer), gzip or zstd file: one line naming it
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "a.parquet").write_bytes(good[: n // 2])
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    (cut / "b.jsonl.gz").write_bytes(gzip.compress(lines)[:-100])
    (cut / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines)[:-100])
    (cut / "d.jsonl.zst").write_bytes(b"not zstd at all" * 10)
    for f in sorted(cut.iterdir()):
        with pytest.raises(UserError) as e:
            load_documents("tinygsm", str(f))
        assert str(f) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ splits
def test_hub_layout_folders_read_the_split_only(tmp_path, monkeypatch):
    omi2 = omi2_folder(tmp_path / "OpenMathInstruct-2")
    for where in (omi2, omi2 / "data", tmp_path):  # the repo root, its data/ folder, or any folder above
        files = [Path(f["path"]).name for f in source_files("omi2", str(where))]
        assert files == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"], where
    docs, c = load_documents("omi2", str(omi2))
    assert len(docs) == 240 and not [d for d in docs if d.startswith("train_")]
    # OMI-1: correct_solutions/train only (not validation, not the incorrect solutions)
    omi1 = tmp_path / "OpenMathInstruct-1"
    row = {"question": "q?", "generated_solution": "s", "is_correct": True}
    write_jsonl(omi1 / "correct_solutions" / "train.jsonl", [row] * 4)
    write_jsonl(omi1 / "correct_solutions" / "validation.jsonl", [row] * 3)
    write_jsonl(omi1 / "incorrect_solutions" / "train.jsonl", [dict(row, is_correct=False)] * 5)
    assert [os.path.relpath(f["path"], omi1) for f in source_files("omi1", str(omi1))] == [
        os.path.join("correct_solutions", "train.jsonl")]
    # the hub code path (list at the pinned revision, stream each file) on a local folder in the hub's layout
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem
    hub = tmp_path / "hub"
    omi2_folder(hub / "datasets" / "nvidia" / f"OpenMathInstruct-2@{OMI2_REV}")
    monkeypatch.setattr(sources, "_hub_fs", lambda: DirFileSystem(str(hub), fs=LocalFileSystem()))
    monkeypatch.setattr(sources, "hub_unreachable", lambda: None)
    files = source_files("omi2")
    assert [f["path"] for f in files] == [f"hf:datasets/nvidia/OpenMathInstruct-2@{OMI2_REV}/data/"
                                          f"train-0000{i}-of-00002.parquet" for i in (0, 1)]
    assert load_documents("omi2") == (docs, c)
    d = prepare_mixture("omi2:1", 4096, str(tmp_path / "cache"), workers=2, quiet=True)
    assert open_mixture(d)["meta"]["sources"]["omi2"]["rows"] == 240
    # found again from its pinned revision alone, without listing the hub
    monkeypatch.setattr(sources, "_hub_fs", lambda: pytest.fail("listed the hub again"))
    assert prepare_mixture("omi2:1", 4096, str(tmp_path / "cache"), quiet=True) == d


# ------------------------------------------------------------------------------------------------ shards
def test_shards_build_their_share_and_the_last_writes_the_mixture(tmp_path, capsys):
    from data import prepare
    mix = "syn-tinygsm:1,syn-omi1:1,syn-omi2:1,syn-finemath:1"
    out = str(tmp_path / "cache")
    assert prepare_mixture(mix, 4096, out, unit=80, shard=(0, 2), workers=1, quiet=True) is None
    assert len(list(tmp_path.rglob("*.bin"))) == 2  # units 0 and 2 of 4
    d = prepare_mixture(mix, 4096, out, unit=80, shard=(1, 2), workers=1, quiet=True)
    assert d and len(list(tmp_path.rglob("*.bin"))) == 4
    assert prepare_mixture(mix, 4096, out, unit=80, quiet=True) == d
    for bad in (["--shard-index", "1"], ["--shard-index", "2", "--num-shards", "2"], ["--workers", "0"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            prepare.main(["--out", out] + bad)
        assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1, bad


# ------------------------------------------------------------------------------------------------ bench
def test_bench_data_section_smoke(tmp_path, monkeypatch, capsys):
    # bench.py --sections data end to end on tiny inputs (its figures are meaningless at this size)
    import argparse
    bench = pytest.importorskip("bench")
    monkeypatch.setattr(bench, "DATA_INPUTS", str(tmp_path / "inputs"))
    monkeypatch.chdir(ROOT)
    res = bench.bench_data(argparse.Namespace(smoke=True))
    small, big = res["data_rows"]
    assert res[f"data_tokens_{big}"] > res[f"data_tokens_{small}"] > 0
    for n in (small, big):
        for w in (1, 2):
            assert res[f"data_tok_per_s_{n}_w{w}"] > 0 and 0 < res[f"data_peak_mb_{n}_w{w}"] < 1024
    assert res["data_peak_ratio_big_vs_small"] > 0 and res["data_52b_hours_16_cores"] > 0
    assert "tokens/s" in capsys.readouterr().out
    files = {str(p.relative_to(tmp_path / "inputs")) for p in (tmp_path / "inputs").rglob("*.*")}
    assert files == {f"rows-{n}/{d}/data/train-00000-of-00001.{e}" for n in (small, big)
                     for d, e in (("OpenMathInstruct-2", "jsonl"), ("TinyGSM", "parquet"))}
