"""The model registry (rnnlib/registry.py, `rnnjobs models`): versions, aliases with history,
races settled by create-if-absent, models:// references wherever a model goes. Locally and on
moto's S3 server; no Ray, tiny untrained bundles."""

import json
import shutil
import threading
import uuid

import pytest
import torch
from conftest import ROOT
from jobhelpers import FAKE_SECRET, cli

from rnnlib import storage
from rnnlib.bundle import load_bundle, open_bundle, save_bundle
from rnnlib.errors import BundleError, ConfigError, UserError
from rnnlib.models import CharLM
from rnnlib.registry import (
    ENV,
    Listing,
    PromoteConflict,
    Ref,
    Registry,
    parse_ref,
    ref_problem,
)
from rnnlib.text import Vocab

pytestmark = pytest.mark.timeout(300)
SCORE_CONFIG = str(ROOT / "jobs" / "configs" / "forecast-score.yaml")
CORPUS = "ROMEO: But soft, what light through yonder window breaks?\n"


def make_bundle(path, seed: int):
    """An untrained CharLM bundle: weights differ by seed, metrics as rnnjobs train records them."""
    torch.manual_seed(seed)
    vocab = Vocab.from_text(CORPUS)
    args = dict(vocab_size=len(vocab), embed=4, hidden=8, layers=1, cell="gru")
    val = {"nats_per_char": 2.0 + seed / 10, "bits_per_char": (2.0 + seed / 10) / 0.6931, "perplexity": 7.0,
           "characters": 100}
    metrics = {"run": f"run-{seed}", "history": [{"epoch": 0, "val_loss": 2.5}], "best_epoch": 0,
               "final": {"val": val, "vocab_size": len(vocab)}}
    return save_bundle(path, CharLM(**args), task="text", model_args=args, data={"seq_len": 16, "val_frac": 0.1},
                       vocab=vocab, metrics=metrics, config={"task": "text"})


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return [make_bundle(root / f"b{i}", seed=i) for i in range(6)]


def sha(bundle) -> str:
    return json.loads((bundle / "bundle.json").read_text())["weights_sha256"]


@pytest.fixture
def atomic_moto(moto_s3, monkeypatch):
    """moto checks If-None-Match and then stores the object without a lock, so two PUTs at the same
    moment can both pass the check, which S3 itself never lets happen. The server runs in this
    process: serialise its PutObject so the races below test our code, not moto's."""
    from moto.s3.responses import S3Response

    lock, put = threading.Lock(), S3Response.put_object

    def put_object(self, *args, **kwargs):
        with lock:
            return put(self, *args, **kwargs)

    monkeypatch.setattr(S3Response, "put_object", put_object)
    return moto_s3


@pytest.fixture(params=["local", "s3"])
def registry(request, tmp_path):
    if request.param == "local":
        return Registry(str(tmp_path / "registry"))
    _, _, client = request.getfixturevalue("atomic_moto")
    bucket = f"reg-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return Registry(f"s3://{bucket}/models")


def move_files(reg: Registry, name: str, alias: str) -> list[str]:
    return [u.rsplit("/", 1)[1] for u, _, _ in storage.list_files(storage.join(reg.uri, name, "aliases", alias),
                                                                  missing_ok=True)]


def test_register_list_show_promote(registry, bundles, tmp_path, monkeypatch):
    reg = registry
    v1 = reg.register("char", str(bundles[1]), data={"data_sha256": "ab" * 32, "rows": 1234})
    v2 = reg.register("char", str(bundles[2]))
    assert (v1["version"], v2["version"]) == (1, 2)
    stored = json.loads(storage.read_bytes(storage.join(reg.uri, "char", "1", "version.json")))
    assert stored == v1
    assert v1["source"] == str(bundles[1]) and v1["task"] == "text" and v1["run"] == "run-1"
    assert v1["weights_sha256"] == sha(bundles[1]) and v2["weights_sha256"] == sha(bundles[2])
    assert v1["metrics"]["val"]["nats_per_char"] == pytest.approx(2.1) and "history" not in v1["metrics"]
    assert v1["data"] == {"data_sha256": "ab" * 32, "rows": 1234} and v2["data"] == {}
    assert v1["created"].endswith("+00:00")
    # the copy holds the bundle's two files, and loads as the same weights
    copied = storage.list_files(reg.bundle_uri("char", 1), recursive=True)
    assert sorted(u.rsplit("/", 1)[1] for u, _, _ in copied) == ["bundle.json", "weights.pt"]
    assert open_bundle(reg.bundle_uri("char", 1)).meta["weights_sha256"] == sha(bundles[1])

    move, moved = reg.promote("char", 1, expect=None, reason="first model", figures={"bpc": 3.03})
    assert moved and (move["seq"], move["version"], move["previous"]) == (1, 1, None)
    move, moved = reg.promote("char", 2, expect=1, reason="lower val loss", figures={"bpc_v1": 3.03, "bpc_v2": 3.17})
    assert moved and (move["seq"], move["version"], move["previous"]) == (2, 2, 1)
    history = reg.alias_history("char", "champion")
    assert [(m["version"], m["previous"], m["reason"]) for m in history] == [
        (1, None, "first model"), (2, 1, "lower val loss")]
    assert history[1]["figures"] == {"bpc_v1": 3.03, "bpc_v2": 3.17}
    assert move_files(reg, "char", "champion") == ["000001.json", "000002.json"]

    uri, info = reg.resolve("models://char@champion")
    assert uri == reg.bundle_uri("char", 2) and info["version"] == 2 and info["ref"] == "models://char@champion"
    assert reg.resolve("models://char/1")[1]["weights_sha256"] == sha(bundles[1])

    # someone compared against version 1, but it moved: refused, nothing written
    with pytest.raises(PromoteConflict, match=r"char@champion is version 2, not version 1 as expected"):
        reg.promote("char", 1, expect=1)
    with pytest.raises(PromoteConflict, match="not unset as expected"):
        reg.promote("char", 1, expect=None)
    # where it already points: nothing to write
    move, moved = reg.promote("char", 2)
    assert not moved and move["seq"] == 2
    with pytest.raises(UserError, match=r"char/9 .*no such version; char has versions 1-2"):
        reg.promote("char", 9)
    with pytest.raises(UserError, match="no model named 'nope'"):
        reg.promote("nope", 1)
    assert move_files(reg, "char", "champion") == ["000001.json", "000002.json"]

    # the same through the command line
    code, out = cli("models", "list", "char", "--registry", reg.uri)
    assert code == 0, out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert sha(bundles[1])[:12] in rows["1"] and "val 3.030 bits/char" in rows["1"]
    assert "champion" in rows["2"] and "champion" not in rows["1"]
    code, out = cli("models", "promote", "char", "1", "--expect", "2", "--reason", "roll back",
                    "--figure", "bpc=3.03", "--registry", reg.uri)
    assert code == 0 and "char@champion -> version 1 (was version 2; move 3)" in out, out
    code, out = cli("models", "show", "char@champion", "--registry", reg.uri)
    assert code == 0, out
    shown = json.loads(out[out.index("{"):out.index("\n}\n") + 2])
    assert shown["version"] == 1 and shown["weights_sha256"] == sha(bundles[1])
    assert "| 3   |" in out and "roll back" in out and '{"bpc": 3.03}' in out
    code, out = cli("models", "list", "--registry", reg.uri)
    assert code == 0 and "| char | 2 " in out and "champion=1" in out, out
    code, out = cli("models", "promote", "char", "2", "--expect", "2", "--registry", reg.uri)
    assert code == 2 and "is version 1, not version 2 as expected" in out and "Traceback" not in out
    assert FAKE_SECRET not in out


@pytest.mark.parametrize("threads", [6])
def test_concurrent_registers_never_share_a_number(registry, bundles, threads):
    barrier, results, errors = threading.Barrier(threads), {}, []

    def register(i):
        barrier.wait()
        try:
            results[i] = registry.register("race", str(bundles[i]), data={"thread": i})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    workers = [threading.Thread(target=register, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    assert sorted(r["version"] for r in results.values()) == list(range(1, threads + 1))
    for i, info in results.items():  # each number holds the bundle its register copied, and only that
        n = info["version"]
        assert registry.version("race", n)["data"] == {"thread": i}
        copied = json.loads(storage.read_bytes(storage.join(registry.bundle_uri("race", n), "bundle.json")))
        assert copied["weights_sha256"] == sha(bundles[i]) == info["weights_sha256"]


def test_concurrent_promotes_one_wins_per_seq(registry, bundles):
    for b in bundles[:4]:
        registry.register("duel", str(b))
    # all see the alias unset; exactly one lands, the others are told
    barrier, won, lost = threading.Barrier(4), [], []

    def first(v):
        barrier.wait()
        try:
            won.append(registry.promote("duel", v, expect=None)[0])
        except PromoteConflict as e:
            lost.append(str(e))

    workers = [threading.Thread(target=first, args=(v,)) for v in (1, 2, 3, 4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert len(won) == 1 and len(lost) == 3, (won, lost)
    assert all("nothing was changed" in m for m in lost)
    history = registry.alias_history("duel", "champion")
    assert [m["version"] for m in history] == [won[0]["version"]]

    # then each of 4 promoters moves the alias 3 times, retrying when it loses: no move is lost
    # or doubled, and each records where the alias was just before it
    barrier = threading.Barrier(4)
    errors = []

    def mover(k):
        barrier.wait()
        done = 0
        while done < 3:
            current = registry.alias_target("duel", "champion")["version"]
            target = current % 4 + 1
            try:
                registry.promote("duel", target, expect=current, reason=f"mover {k}")
                done += 1
            except PromoteConflict:
                continue
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
                return

    workers = [threading.Thread(target=mover, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=200)
    assert not errors, errors
    history = registry.alias_history("duel", "champion")
    assert [m["seq"] for m in history] == list(range(1, 14))
    assert all(m["previous"] == before["version"] for before, m in zip(history, history[1:]))
    assert all(m["version"] != m["previous"] for m in history[1:])
    assert sorted(m["reason"] for m in history[1:]) == sorted(f"mover {k}" for k in range(4) for _ in range(3))
    assert move_files(registry, "duel", "champion") == [f"{s:06d}.json" for s in range(1, 14)]


def test_crashed_register_and_stale_listing(bundles, tmp_path, monkeypatch):
    reg = Registry(str(tmp_path / "registry"))
    reg.register("m", str(bundles[0]))
    reg.register("m", str(bundles[1]))
    # a register that crashed after taking number 3: its CLAIM, part of the copy, no version.json
    claim = b'{"claimed": "2024-01-02T03:04:05+00:00"}'
    assert storage.create_if_absent(storage.join(reg.uri, "m", "3", "CLAIM"), claim)
    shutil.copy(bundles[2] / "weights.pt", tmp_path / "w")
    storage.write_bytes(storage.join(reg.uri, "m", "3", "model", "weights.pt"), (tmp_path / "w").read_bytes())
    # a listing that missed every number (another writer's, or a slow store's): the CLAIMs still decide
    monkeypatch.setattr(Registry, "scan", lambda self, name: Listing())
    assert reg.register("m", str(bundles[3]))["version"] == 4
    monkeypatch.undo()
    assert [(v["version"], v.get("incomplete", False)) for v in reg.versions("m")] == [
        (1, False), (2, False), (3, True), (4, False)]
    with pytest.raises(UserError, match="m/3 .* is incomplete"):
        reg.resolve("models://m/3")
    with pytest.raises(UserError, match="is incomplete"):
        reg.promote("m", 3)
    code, out = cli("models", "list", "m", "--registry", reg.uri)
    assert code == 0, out
    row3 = next(line for line in out.splitlines() if line.startswith("| 3 "))
    assert "incomplete" in row3 and "2024-01-02T03:04:05" in row3
    code, out = cli("models", "list", "--registry", reg.uri)
    assert "| m    | 3        | 4      | 1          |" in out, out


def test_bad_bundles_are_refused_naming_the_source(bundles, tmp_path):
    reg = Registry(str(tmp_path / "registry"))
    bad = tmp_path / "damaged"
    shutil.copytree(bundles[0], bad)
    data = bytearray((bad / "weights.pt").read_bytes())
    data[-100] ^= 0xFF
    (bad / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        reg.register("m", str(bad))
    assert f"{bad}/weights.pt: sha256" in str(e.value) and "rnnjobs-register-" not in str(e.value)
    (bad / "weights.pt").unlink()
    with pytest.raises(BundleError, match=f"{bad}: weights.pt is missing"):
        reg.register("m", str(bad))
    with pytest.raises(BundleError, match="a file; point to the bundle's folder"):
        reg.register("m", str(bundles[0] / "bundle.json"))
    with pytest.raises(BundleError, match="nothing there"):
        reg.register("m", str(tmp_path / "absent"))
    assert reg.names() == []  # nothing was claimed for any of them
    code, out = cli("models", "register", "m", bad, "--registry", reg.uri)
    assert code == 2 and "weights.pt is missing" in out and "Traceback" not in out
    for name in ("../up", "a/b", ".hidden", ""):
        with pytest.raises(UserError, match="is not a single folder name"):
            reg.register(name, str(bundles[0]))
    reg.register("m", str(bundles[0]))
    with pytest.raises(UserError, match="all digits"):
        reg.promote("m", 1, alias="2024")


def test_references_parse_and_config_keys():
    assert parse_ref("models://fc@champion") == Ref("fc", alias="champion")
    assert parse_ref("models://fc/12") == Ref("fc", version=12)
    assert str(Ref("fc", version=12)) == "models://fc/12" and str(Ref("fc", alias="prod")) == "models://fc@prod"
    assert parse_ref("fc@prod", scheme=False) == Ref("fc", alias="prod")
    for ref, why in [("models://fc", "names no version or alias"), ("models://fc@3", "for version 3 write models://fc/3"),
                     ("models://fc/0", "where a version number"), ("models://fc/x", "where a version number"),
                     ("models://../x/1", "not a single folder name"), ("fc/3", "is not a model reference")]:
        assert why in ref_problem(ref), ref
        with pytest.raises(UserError, match=why):
            parse_ref(ref)
    # an alias is not user info; a secret before '@' still is, and is redacted
    assert not storage.has_credentials("models://fc@champion")
    assert storage.has_credentials("models://KEY:SECRET@fc") and storage.redact("models://K:S@fc") == "models://***@fc"
    # model keys take a reference; other location keys do not
    assert storage.uri_problem("models://fc@champion", models=True) is None
    assert "only the keys that hold a model" in storage.uri_problem("models://fc@champion")
    from jobs.score import load_score_config
    from rnnlib.config import GenerateConfig, section_from_dict

    cfg = load_score_config(SCORE_CONFIG, ["model=models://fc@champion"])
    assert cfg.model == "models://fc@champion"
    assert section_from_dict(GenerateConfig, {"model": "models://char/3"}).model == "models://char/3"
    with pytest.raises(ConfigError) as e:
        load_score_config(SCORE_CONFIG, ["output=models://fc@champion", "model=models://fc"])
    assert [p.split(":")[0] for p in e.value.problems] == ["model", "output"]


def test_references_work_wherever_a_model_does(bundles, tmp_path, monkeypatch):
    reg = Registry(str(tmp_path / "registry"))
    for b in bundles[1:3]:
        reg.register("char", str(b))
    reg.promote("char", 2, reason="better")
    monkeypatch.setenv(ENV, reg.uri)

    b = open_bundle("models://char@champion", task="text")
    assert b.registry["version"] == 2 and b.registry["uri"] == reg.bundle_uri("char", 2)
    assert b.meta["weights_sha256"] == sha(bundles[2])
    assert torch.equal(b.model.head.weight, load_bundle(bundles[2]).model.head.weight)

    gen = ["generate", "--prompt", "RO", "--length", 40, "--seed", 3]
    by_ref, by_path, other = (cli(*gen, "--model", m) for m in ("models://char@champion", bundles[2], bundles[1]))
    assert by_ref[0] == by_path[0] == 0, by_ref
    assert by_ref[1] == by_path[1] != other[1]
    text = tmp_path / "t.txt"
    text.write_text(CORPUS * 20)
    ev = [cli("evaluate", "--model", m, "--text", text, "--device", "cpu") for m in ("models://char/1", bundles[1])]
    assert ev[0] == ev[1] and ev[0][0] == 0 and "nats/char" in ev[0][1]

    # the alias moves: the same reference now gives the other model
    reg.promote("char", 1, expect=2, reason="roll back")
    assert cli(*gen, "--model", "models://char@champion")[1] == other[1]

    # score resolves in the driver and records the reference and the version it used
    from jobs.score import model_block

    block = model_block(open_bundle("models://char@champion"), reg.bundle_uri("char", 1))
    assert block["registry"] == {"ref": "models://char@champion", "name": "char", "version": 1}
    assert block["uri"] == reg.bundle_uri("char", 1) and block["weights_sha256"] == sha(bundles[1])

    code, out = cli("report", "models://char@champion", "--out", tmp_path / "report")
    assert code == 0, out
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Model: `models://char@champion`" in md and "Version 1 of char" in md
    history = md[md.index("History of `char@champion`"):]
    assert "better" in history and "roll back" in history and "bits/char" in md

    # the registry's copy replaced behind its back: refused, not loaded
    shutil.copy(bundles[0] / "weights.pt", tmp_path / "registry" / "char" / "1" / "model" / "weights.pt")
    shutil.copy(bundles[0] / "bundle.json", tmp_path / "registry" / "char" / "1" / "model" / "bundle.json")
    with pytest.raises(BundleError, match="differs from the one registered"):
        open_bundle("models://char@champion")


def test_reference_errors_exit_2_with_the_fix(bundles, tmp_path, monkeypatch):
    reg = Registry(str(tmp_path / "registry"))
    reg.register("char", str(bundles[1]))
    monkeypatch.delenv(ENV, raising=False)
    cases = [
        (["generate", "--model", "models://char@champion"], [f"set {ENV}"]),
        (["models", "list"], ["--registry", ENV]),
    ]
    for args, needles in cases:
        code, out = cli(*args)
        assert code == 2 and all(n in out for n in needles) and "Traceback" not in out, out
    monkeypatch.setenv(ENV, reg.uri)
    cases = [
        (["generate", "--model", "models://nope@champion"], "no model named 'nope'"),
        (["generate", "--model", "models://char@champion"], "alias 'champion' of char was never set"),
        (["evaluate", "--model", "models://char/7"], "no such version; char has versions 1"),
        (["evaluate", "--model", "models://char@7"], "for version 7 write models://char/7"),
        (["models", "show", "char@champion"], "was never set"),
        (["models", "show", "char/2"], "no such version"),
        (["models", "promote", "char", "5"], "no such version"),
        (["models", "promote", "char", "1", "--expect", "soon"], "'soon': give the version the alias points at now"),
        (["models", "register", "a/b", str(bundles[0])], "not a single folder name"),
        (["score", SCORE_CONFIG, "model=models://char/1"], "this is a text model"),
        (["score", SCORE_CONFIG, "model=models://char@nope", f"output={tmp_path}/o"],
         "alias 'nope' of char was never set"),
    ]
    for args, needle in cases:
        code, out = cli(*args)
        assert code == 2 and needle in out and "Traceback" not in out, (args, out)
    assert not (tmp_path / "o").exists()
    code, out = cli("models", "list", "--registry", f"s3://KEY:{FAKE_SECRET}@bucket/models")
    assert code == 2 and FAKE_SECRET not in out and "--registry" in out


def test_submitted_jobs_resolve_against_the_same_registry(monkeypatch):
    from jobs.submit import job_env

    monkeypatch.delenv(ENV, raising=False)
    assert ENV not in job_env() and job_env()["RAY_TRAIN_V2_ENABLED"] == "1"
    monkeypatch.setenv(ENV, "s3://bucket/models")
    assert job_env()[ENV] == "s3://bucket/models"
    monkeypatch.setenv(ENV, f"s3://KEY:{FAKE_SECRET}@bucket/models")
    with pytest.raises(UserError, match=f"{ENV}: s3://\\*\\*\\*@bucket/models has credentials") as e:
        job_env()
    assert FAKE_SECRET not in str(e.value)
