"""`rlaif annotate serve|export|import`: argument parsing and the command functions.

`register(sub)` adds the `annotate` command to rlaif's top-level parser. `rlaif eval-labeler` reads
an annotation database or export given as --human itself (rlaif/cli_judge.py, with
rlaif/annotate/human_eval.py).
"""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

from rlaif.errors import UserError

DEFAULT_PORT = 8765


def _default_annotator() -> str:
    try:
        return getpass.getuser() or "annotator"
    except (KeyError, OSError):
        return "annotator"


def cmd_serve(args) -> int:
    from rlaif.annotate.app import allowed_hosts, create_app
    from rlaif.annotate.pairs import load_annotation_pairs
    from rlaif.annotate.serve import bind, run
    from rlaif.annotate.store import Store, check_name
    from rlaif.constitution import load_constitution

    annotator = check_name(args.annotator, "--annotator")
    if args.overlap is not None and args.overlap < 0:
        raise UserError(f"--overlap {args.overlap}: expected 0 (everyone labels every pair) or a positive number")
    constitution = load_constitution(args.constitution)
    db = Path(args.db)
    new = not (db.exists() and db.stat().st_size > 0)
    store = None if new else Store(db)  # a db of another schema fails here, before anything is written
    seed = args.seed if args.seed is not None else (0 if new else store.seed)
    if store is not None and seed != store.seed:
        raise UserError(f"--seed {args.seed}: {db} was made with seed {store.seed} (it fixes the order and the "
                        "blinded sides); drop --seed or use a new --db")
    pairs = load_annotation_pairs(args.pairs, constitution, seed) if args.pairs else None
    if pairs is None and store is None:
        raise UserError(f"{db}: no such annotation database; give --pairs FILE to start one")
    sock = bind(args.host, args.port)  # "in use" fails before the database is created
    try:
        if store is None:
            store = Store(db, create=True, seed=seed, overlap=args.overlap or 0)
        elif args.overlap is not None:
            store.set_overlap(args.overlap)
        added = store.add_pairs(pairs) if pairs else 0
        counts = store.counts()
        if not counts["pairs"]:
            raise UserError(f"{db}: holds no pairs; give --pairs FILE")
        app = create_app(store, annotator, allowed_hosts(args.host, args.allowed_host))
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    k = store.overlap
    banner = (f"annotate: {counts['pairs']} pairs in {db} ({added} new), "
              f"{'every annotator labels every pair' if k == 0 else f'{k} annotators per pair'}; "
              f"{sum(sum(v.values()) for v in counts['annotators'].values())} labels so far\n"
              f"  serving on http://{url_host}:{port}/ (another annotator: add ?annotator=NAME)")
    run(app, sock, f"http://{url_host}:{port}/?annotator={annotator}", banner)
    return 0


def _export_format(args) -> str:
    if args.format:
        return args.format
    return "label-studio" if str(args.out).endswith(".json") else "jsonl"


def cmd_export(args) -> int:
    from rlaif.annotate.export import export_jsonl, export_label_studio
    from rlaif.annotate.store import Store

    store = Store(args.db)
    if _export_format(args) == "label-studio":
        s = export_label_studio(store, args.out)
        print(f"annotate export: {s['tasks']} tasks, {s['annotations']} annotations -> {args.out} "
              f"(Label Studio JSON; labeling config {s['config']})")
    else:
        s = export_jsonl(store, args.out)
        print(f"annotate export: {s['records']} preference records from {s['annotators']} annotators on "
              f"{s['pairs']} pairs -> {args.out} (left out: {s['skips']} skips, {s['both_bad_no_point']} "
              "'both bad' with no point)")
    return 0


def cmd_import(args) -> int:
    from rlaif.annotate.export import import_label_studio
    from rlaif.annotate.store import Store
    from rlaif.constitution import load_constitution

    constitution = load_constitution(args.constitution)
    db = Path(args.db)
    store = Store(db) if db.exists() and db.stat().st_size > 0 else None
    if store is None:
        from rlaif.annotate.export import read_label_studio

        read_label_studio(args.label_studio, constitution, args.seed or 0)  # a bad file: no database made
        store = Store(db, create=True, seed=args.seed or 0)
    s = import_label_studio(args.label_studio, store, constitution)
    print(f"annotate import: {s['tasks']} Label Studio tasks -> {s['pairs']} pairs, {s['labels']} labels in {db}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("annotate", help="human A/B labels on your own pairs: `rlaif annotate serve|export|import`")
    asub = p.add_subparsers(dest="annotate_command", metavar="ACTION", required=True)

    s = asub.add_parser("serve", help="a local page for labeling pairs A/B on an 8-point scale -> a SQLite db")
    s.add_argument("--pairs", help="pairs JSONL (prompt + response_a/response_b, prompt + chosen/rejected, or "
                   "HH-RLHF; optional principle or question per line), or annotate_sample for the shipped sample; "
                   "optional when --db already holds pairs")
    s.add_argument("--db", required=True, help="the annotation database (SQLite); made on first use, resumed after")
    s.add_argument("--annotator", default=_default_annotator(),
                   help="who labels at the plain URL (default: your user name); others add ?annotator=NAME")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s; 0 picks a free one)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another Host name the page is reached by (repeatable; the bound address and localhost "
                   "always work): requests naming any other host are refused, against DNS rebinding")
    s.add_argument("--overlap", type=int, help="annotators per pair; 0 = every annotator labels every pair "
                   "(default 0 for a new db; kept in the db)")
    s.add_argument("--constitution", default="harmless",
                   help="where the principles' questions come from (default: %(default)s)")
    s.add_argument("--seed", type=int, help="fixes the order and each annotator's blinded sides (new db: default 0)")
    s.set_defaults(func=cmd_serve)

    e = asub.add_parser("export", help="labels -> preference JSONL (p from the 8-point scale), or Label Studio JSON")
    e.add_argument("--db", required=True, help="the annotation database")
    e.add_argument("--out", required=True, type=Path, help="output file (.jsonl, or .json for Label Studio)")
    e.add_argument("--format", choices=["jsonl", "label-studio"], help="default: by the --out suffix")
    e.set_defaults(func=cmd_export)

    i = asub.add_parser("import", help="a Label Studio pairwise JSON export -> pairs and labels in the db")
    i.add_argument("--label-studio", required=True, help="Label Studio JSON export (pairwise tasks)")
    i.add_argument("--db", required=True, help="the annotation database (made if absent)")
    i.add_argument("--constitution", default="harmless", help="questions for tasks that carry none")
    i.add_argument("--seed", type=int, help="seed of a new db")
    i.set_defaults(func=cmd_import)
