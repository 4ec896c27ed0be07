"""The annotation server as a real process: two annotators at once, kill -9 mid-session, resume,
overlap, export/import round trips, and the bad inputs that keep it from starting."""

import hashlib
import json
import socket
import sqlite3
import threading

import pytest

from rlaif.annotate import scale
from rlaif.annotate.store import APPLICATION_ID, Store
from rlaif.cli import main
from annotate_server import current_pair, post_label, progress, start_server, stop

SAMPLE = "annotate_sample"  # the shipped 12-pair sample


def test_two_annotators_posting_at_once_lose_nothing(tmp_path):
    db = tmp_path / "labels.sqlite"
    proc, base = start_server(db, "--pairs", SAMPLE)
    try:
        start, errors, given = threading.Barrier(2), [], {}

        def annotate(name: str) -> None:
            try:
                start.wait()
                for i in range(12):
                    pid = current_pair(base, name)
                    given[(name, pid)] = 1 + (i % 8)
                    post_label(base, name, pid, point=1 + (i % 8), comment=f"{name} {i}")
                    post_label(base, name, pid, point=1 + (i % 8), comment=f"{name} {i}")  # a double submit
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=annotate, args=(n,)) for n in ("alice", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert progress(base, "alice") == {"done": 12, "total": 12} == progress(base, "bob")
        assert current_pair(base, "alice") is None
    finally:
        stop(proc)
    store = Store(db)
    labels = store.labels()
    assert len(labels) == 24 and store.counts()["annotators"] == {"alice": {"label": 12, "skip": 0},
                                                                   "bob": {"label": 12, "skip": 0}}
    for x in labels:  # each label is what was posted, unblinded with the annotator's coin
        shown = given[(x["annotator"], x["pair_id"])]
        assert x["point"] == scale.to_pair_terms(shown, x["flipped"]) and x["p_a"] == scale.p_a(x["point"])
    # sides are blinded per annotator: the two saw different sides on some pairs
    assert {x["flipped"] for x in labels} == {True, False}
    flips = {(x["annotator"], x["pair_id"]): x["flipped"] for x in labels}
    assert any(flips[("alice", p)] != flips[("bob", p)] for p in store.pairs())


def test_kill_9_mid_session_keeps_every_submitted_label(tmp_path):
    db = tmp_path / "labels.sqlite"
    proc, base = start_server(db, "--pairs", SAMPLE)
    posted = {}
    try:
        for i in range(5):
            pid = current_pair(base, "alice")
            assert post_label(base, "alice", pid, point=8 - i)["done"] == i + 1
            posted[pid] = 8 - i
        post_label(base, "alice", current_pair(base, "alice"), skip="1")
        current_pair(base, "alice")  # the 7th pair is open on the page when the server dies
    finally:
        proc.kill()  # SIGKILL: no shutdown handlers run
        proc.wait()
    proc, base = start_server(db)  # no --pairs: resumes from the database
    try:
        assert progress(base, "alice") == {"done": 6, "total": 12}
        assert progress(base, "bob") == {"done": 0, "total": 12}
    finally:
        stop(proc)
    rows = {x["pair_id"]: x for x in Store(db).labels()}
    assert len(rows) == 6 and sum(x["status"] == "skip" for x in rows.values()) == 1
    for pid, shown in posted.items():
        assert rows[pid]["point"] == scale.to_pair_terms(shown, rows[pid]["flipped"])


def test_overlap_limits_annotators_per_pair_and_counts_stay_exact(tmp_path):
    from rlaif.annotate.pairs import load_annotation_pairs
    from rlaif.constitution import load_constitution

    store = Store(tmp_path / "l.sqlite", create=True, overlap=1)
    assert store.add_pairs(load_annotation_pairs(SAMPLE, load_constitution("harmless"))) == 12
    first, _ = store.next_pair("alice")
    second, _ = store.next_pair("bob")  # alice holds the first pair open: bob gets another
    assert first["pair_id"] != second["pair_id"]
    store.record("alice", first["pair_id"], point=3)
    store.record("bob", second["pair_id"], point=6)
    assert store.progress("alice") == {"done": 1, "total": 11} == store.progress("bob")
    assert store.progress("carol") == {"done": 0, "total": 10}
    store.record("carol", store.next_pair("carol")[0]["pair_id"], skip=True)  # a skip frees the pair again
    assert store.progress("alice")["total"] == 11
    store.set_overlap(0)
    assert store.progress("alice") == {"done": 1, "total": 12}


def test_export_jsonl_and_label_studio_round_trip(tmp_path, capsys):
    from rlaif.annotate.export import read_human_jsonl

    db = tmp_path / "l.sqlite"
    from rlaif.annotate.pairs import load_annotation_pairs
    from rlaif.constitution import load_constitution

    store = Store(db, create=True)
    pairs = load_annotation_pairs(SAMPLE, load_constitution("harmless"))
    store.add_pairs(pairs)
    ids = [p["pair_id"] for p in pairs]
    store.record("alice", ids[0], point=1, comment="clear <b>case</b>")
    store.record("alice", ids[1], point=6)
    store.record("bob", ids[0], point=2)
    store.record("bob", ids[1], skip=True)
    store.record("bob", ids[2], both_bad=True)  # no point: not a preference
    assert main(["annotate", "export", "--db", str(db), "--out", str(tmp_path / "h.jsonl")]) == 0
    assert "3 preference records from 2 annotators" in capsys.readouterr().out
    recs = [json.loads(x) for x in (tmp_path / "h.jsonl").read_text().splitlines()]
    a0 = next(r for r in recs if r["annotator"] == "alice" and r["pair_id"] == ids[0])
    flipped = store.flipped("alice", ids[0])
    assert a0["p_a"] == scale.p_a(scale.to_pair_terms(1, flipped)) and a0["flipped"] == flipped
    assert a0["p_chosen"] == 0.9375 and a0["comment"] == "clear <b>case</b>" and a0["created_at"].endswith("Z")
    assert a0["chosen"][0]["content"] == (pairs[0]["b"] if flipped else pairs[0]["a"])
    assert {r["annotator"] for r in read_human_jsonl(tmp_path / "h.jsonl")} == {"alice", "bob"}
    # Label Studio: export, import into a fresh db, same labels
    assert main(["annotate", "export", "--db", str(db), "--out", str(tmp_path / "ls.json")]) == 0
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert len(tasks) == 12 and (tmp_path / "ls.label_config.xml").read_text().count("<Choice ") == 8
    t0 = next(t for t in tasks if t["data"]["rlaif"]["pair_id"] == ids[0])
    pw = [r for a in t0["annotations"] for r in a["result"] if r["type"] == "pairwise"]
    assert len(pw) == 2 and pw[0]["value"]["selected"] in ("left", "right")
    db2 = tmp_path / "l2.sqlite"
    assert main(["annotate", "import", "--label-studio", str(tmp_path / "ls.json"), "--db", str(db2)]) == 0
    def key(x):
        return (x["pair_id"], x["annotator"], x["status"], x["p_a"], x["comment"])
    old = sorted(key(x) for x in Store(db).labels() if x["p_a"] is not None or x["status"] == "skip")
    assert sorted(key(x) for x in Store(db2).labels()) == old
    # a plain Label Studio export (binary choice, numeric user, no rlaif fields) imports as a hard label
    plain = [{"id": 7, "data": {"prompt": "Say hi", "answer1": "hi", "answer2": "go away"},
              "annotations": [{"completed_by": 3, "result": [{"type": "pairwise", "value": {"selected": "right"}}]}]}]
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    assert main(["annotate", "import", "--label-studio", str(tmp_path / "plain.json"), "--db", str(db2)]) == 0
    x = next(x for x in Store(db2).labels() if x["annotator"] == "ls-3")
    assert x["p_a"] == 0.0 and x["point"] is None and x["pair"]["a"] == "hi"


# ------------------------------------------------------------------ bad input: one line, exit 2, no server


@pytest.fixture
def no_serving(monkeypatch):
    import rlaif.annotate.serve as serve

    def refuse(*a, **k):
        raise AssertionError("the server started")

    monkeypatch.setattr(serve, "run", refuse)


def one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlaif: error: "), err
    return err[0]


def test_a_pairs_file_with_a_bad_line_names_the_line(tmp_path, capsys, no_serving):
    good = json.dumps({"prompt": "hi", "response_a": "hello", "response_b": "go away"})
    pairs, db = tmp_path / "pairs.jsonl", tmp_path / "l.sqlite"
    pairs.write_text(good + "\n" + good.replace("go away", "bye") + "\n{\"prompt\": \"x\", \"response_a\": \"y\"}\n")
    line = one_line(capsys, ["annotate", "serve", "--pairs", str(pairs), "--db", str(db), "--port", "0"])
    assert f"{pairs}:3: field response_b" in line
    pairs.write_text(good + "\nnot json\n")
    assert f"{pairs}:2: invalid JSON" in one_line(capsys, ["annotate", "serve", "--pairs", str(pairs), "--db", str(db)])
    pairs.write_text(json.dumps({"prompt": "hi", "response_a": "a", "response_b": "b", "principle": "nope"}) + "\n")
    assert f"{pairs}:1: field principle: 'nope'" in one_line(capsys, ["annotate", "serve", "--pairs", str(pairs),
                                                                       "--db", str(db)])
    assert not db.exists()


def test_a_db_of_another_schema_version_is_refused_untouched(tmp_path, capsys, no_serving):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE labels (x)")
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    line = one_line(capsys, ["annotate", "serve", "--pairs", SAMPLE, "--db", str(db), "--port", "0"])
    assert "annotation schema version 99" in line and "reads version 1" in line
    assert "schema version 99" in one_line(capsys, ["annotate", "export", "--db", str(db), "--out", str(tmp_path / "o")])
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    assert "not an rlaif annotation database" in one_line(capsys, ["annotate", "serve", "--db", str(other)])
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before and not (tmp_path / "o").exists()


def test_a_port_in_use_is_one_line_and_nothing_is_created(tmp_path, capsys, no_serving):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        db = tmp_path / "l.sqlite"
        line = one_line(capsys, ["annotate", "serve", "--pairs", SAMPLE, "--db", str(db), "--port", str(port)])
        assert f"127.0.0.1:{port} is already in use" in line and not db.exists()
    finally:
        busy.close()


def test_the_page_files_ship_in_the_wheel():
    """pyproject lists the package and a package-data glob for every static file of the page."""
    import fnmatch
    import tomllib

    from testkit import ROOT

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "rlaif.annotate" in cfg["packages"]
    globs = cfg["package-data"]["rlaif.annotate"]
    static = sorted((ROOT / "rlaif" / "annotate" / "static").iterdir())
    assert {p.name for p in static} >= {"page.html", "pair.html", "page.css", "page.js"}
    assert all(any(fnmatch.fnmatch(f"static/{p.name}", g) for g in globs) for p in static)
    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert "starlette" in deps and "uvicorn" in deps


def test_foreign_host_gets_400_and_foreign_origin_post_gets_403(tmp_path):
    """DNS rebinding: a page on evil.example whose name is made to resolve to 127.0.0.1 reaches the
    server with `Host: evil.example`; a cross-site form posts with that page's Origin. Neither may
    read the pairs or leave a label; the page's own origin (under each local name) and a client that
    sends no Origin (curl) still can."""
    import http.client
    from urllib.parse import urlencode

    proc, base = start_server(tmp_path / "labels.sqlite", "--pairs", SAMPLE)
    address = base.removeprefix("http://")
    port = address.rsplit(":", 1)[1]

    def send(method: str, path: str, headers: dict, body: str | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(address, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    try:
        for path in ("/?annotator=alice", "/api/progress?annotator=alice", "/static/page.js"):
            assert send("GET", path, {"Host": "evil.example"})[0] == 400
            assert send("GET", path, {"Host": f"evil.example:{port}"})[0] == 400
        pid = current_pair(base, "alice")
        form = urlencode({"annotator": "alice", "pair_id": pid, "point": 3})
        post = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        assert send("POST", "/label", {**post, "Host": "evil.example"}, form)[0] == 400
        for origin in ("http://evil.example", f"http://evil.example:{port}", f"http://localhost:{int(port) + 1}",
                       "null"):
            status, body = send("POST", "/label", {**post, "Origin": origin}, form)
            assert status == 403, (origin, status, body)
        assert progress(base, "alice") == {"done": 0, "total": 12}  # nothing was recorded
        # the page's own origin, by its address or as localhost; no Origin at all (curl)
        assert send("GET", "/?annotator=alice", {"Host": f"localhost:{port}"})[0] == 200
        status, body = send("POST", "/label", {**post, "Origin": base}, form)
        assert status == 200 and json.loads(body)["done"] == 1
        status, body = send("POST", "/label", {**post, "Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
                            urlencode({"annotator": "bob", "pair_id": pid, "point": 5}))
        assert status == 200 and json.loads(body)["done"] == 1
        assert post_label(base, "carol", pid, point=2)["done"] == 1
    finally:
        stop(proc)
