"""Labels out of (and into) the annotation database.

Preference JSONL (`rlaif annotate export`): one record per label that states a preference, in the
TRL conversational shape the rest of rlaif reads, with the human fields beside it:

    prompt, chosen, rejected      messages; chosen is the reply the annotator leaned to
    p_chosen, p_a                 the strength: p from the 8-point scale (scale.py: (8.5 − k)/8), or 1.0
                                  for a label without strength (a binary Label Studio choice)
    point, point_label            the point in the pair's terms (1 = reply a much better), None if binary
    response_a, response_b        the pair as given (reply a is not necessarily what was shown as A)
    pair_id, annotator, flipped   flipped: the page showed reply b as A
    both_bad, comment, origin, created_at, updated_at, principle, question, source_line, source_id

Skips, and "both bad" with no point, are not preferences and are left out (the export says how many).

Label Studio: tasks with `data.prompt`, `data.answer1` (reply a), `data.answer2` (reply b) and one
annotation per label whose result holds a `pairwise` choice (`{"selected": "left"}` = answer1) and,
for 8-point labels, a `choices` result named `strength` holding the point's wording. LABEL_CONFIG is
the matching labeling config; `export_label_studio` writes it beside the JSON. Import reads such a
file back (the strength and comment where present, else a binary choice); unlabeled tasks come in
as pairs to label.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlaif.annotate import scale
from rlaif.annotate.pairs import annotation_pairs
from rlaif.annotate.store import Store, check_name
from rlaif.constitution import Constitution
from rlaif.errors import UserError
from rlaif.records import read_jsonl, record_id, write_atomic

LABEL_CONFIG = """<View>
  <Header value="Which reply is better?"/>
  <Text name="prompt" value="$prompt"/>
  <Text name="question" value="$question"/>
  <Pairwise name="comparison" toName="answer1,answer2"/>
  <Text name="answer1" value="$answer1"/>
  <Text name="answer2" value="$answer2"/>
  <Choices name="strength" toName="prompt" choice="single" showInline="true">
""" + "".join(f'    <Choice value="{scale.LABELS[k]}"/>\n' for k in scale.POINTS) + """  </Choices>
  <TextArea name="comment" toName="prompt" rows="2"/>
</View>
"""
_POINT_OF = {v: k for k, v in scale.LABELS.items()}


def conversation_text(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def preference_record(label: dict) -> dict:
    pair, p_a = label["pair"], label["p_a"]
    a_wins = p_a >= 0.5
    win, lose = (pair["a"], pair["b"]) if a_wins else (pair["b"], pair["a"])
    return {
        "id": record_id("human", label["pair_id"], label["annotator"]),
        "prompt": pair["prompt"], "chosen": [{"role": "assistant", "content": win}],
        "rejected": [{"role": "assistant", "content": lose}], "p_chosen": p_a if a_wins else 1.0 - p_a,
        "chosen_is": "a" if a_wins else "b", "p_a": p_a, "point": label["point"],
        "point_label": scale.LABELS[label["point"]] if label["point"] else None,
        "response_a": pair["a"], "response_b": pair["b"], "pair_id": label["pair_id"],
        "annotator": label["annotator"], "flipped": label["flipped"], "both_bad": label["both_bad"],
        "comment": label["comment"], "origin": label["origin"], "created_at": label["created_at"],
        "updated_at": label["updated_at"], "principle": pair.get("principle"), "question": pair.get("question"),
        "source_line": pair.get("source_line"), "source_id": pair.get("source_id"),
    }


def export_jsonl(store: Store, out: str | Path) -> dict:
    labels = store.labels()
    prefs = [preference_record(x) for x in labels if x["status"] == "label" and x["p_a"] is not None]
    write_atomic(Path(out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prefs))
    return {"records": len(prefs), "skips": sum(x["status"] == "skip" for x in labels),
            "both_bad_no_point": sum(x["status"] == "label" and x["p_a"] is None for x in labels),
            "annotators": len({x["annotator"] for x in prefs}), "pairs": len({x["pair_id"] for x in prefs})}


def read_human_jsonl(path: str | Path) -> list[dict]:
    """An exported preference JSONL back into labels (the shape `Store.labels()` returns)."""
    out = []
    for i, rec in enumerate(read_jsonl(path), 1):
        where = f"{path}:{i}"
        for key, kind in (("pair_id", str), ("annotator", str), ("response_a", str), ("response_b", str),
                          ("prompt", list), ("p_a", (int, float))):
            if not isinstance(rec.get(key), kind) or isinstance(rec.get(key), bool):
                raise UserError(f"{where}: field {key}: missing or of the wrong type; expected a record written "
                                "by `rlaif annotate export`")
        if not 0 <= rec["p_a"] <= 1:
            raise UserError(f"{where}: field p_a: {rec['p_a']} is not a probability in [0, 1]")
        pair = {"prompt": rec["prompt"], "a": rec["response_a"], "b": rec["response_b"],
                "principle": rec.get("principle"), "question": rec.get("question"),
                "source_line": rec.get("source_line"), "source_id": rec.get("source_id")}
        out.append({"pair_id": rec["pair_id"], "annotator": rec["annotator"], "status": "label",
                    "point": rec.get("point"), "p_a": float(rec["p_a"]), "both_bad": bool(rec.get("both_bad")),
                    "flipped": bool(rec.get("flipped")), "comment": rec.get("comment") or "",
                    "origin": rec.get("origin", "page"), "created_at": rec.get("created_at"),
                    "updated_at": rec.get("updated_at"), "pair": pair})
    return out


# ------------------------------------------------------------------ Label Studio


def export_label_studio(store: Store, out: str | Path) -> dict:
    """Tasks (every pair) with their annotations -> OUT (JSON list) and OUT's .label_config.xml."""
    labels = store.labels()
    ids = {name: i for i, name in enumerate(sorted({x["annotator"] for x in labels}), 1)}
    by_pair: dict[str, list[dict]] = {}
    for x in labels:
        by_pair.setdefault(x["pair_id"], []).append(x)
    tasks, n_ann = [], 0
    for t, (pid, pair) in enumerate(store.pairs().items(), 1):
        anns = []
        for x in by_pair.get(pid, []):
            if x["status"] == "label" and x["p_a"] is None:
                continue  # "both bad" without a point has no pairwise answer
            n_ann += 1
            result = []
            if x["status"] == "label":
                result.append({"id": f"{n_ann}-pw", "from_name": "comparison", "to_name": "answer1,answer2",
                               "type": "pairwise", "value": {"selected": "left" if x["p_a"] >= 0.5 else "right"}})
                if x["point"]:
                    result.append({"id": f"{n_ann}-st", "from_name": "strength", "to_name": "prompt", "type": "choices",
                                   "value": {"choices": [scale.LABELS[x["point"]]]}})
            if x["comment"]:
                result.append({"id": f"{n_ann}-c", "from_name": "comment", "to_name": "prompt", "type": "textarea",
                               "value": {"text": [x["comment"]]}})
            anns.append({"id": n_ann, "completed_by": ids[x["annotator"]], "rlaif_annotator": x["annotator"],
                         "was_cancelled": x["status"] == "skip", "created_at": x["created_at"],
                         "updated_at": x["updated_at"], "result": result})
        tasks.append({"id": t, "data": {"prompt": conversation_text(pair["prompt"]), "question": pair["question"],
                                        "answer1": pair["a"], "answer2": pair["b"],
                                        "rlaif": {"pair_id": pid, "messages": pair["prompt"],
                                                  "principle": pair.get("principle")}},
                      "annotations": anns})
    out = Path(out)
    write_atomic(out, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    config = out.with_suffix(".label_config.xml")
    write_atomic(config, LABEL_CONFIG)
    return {"tasks": len(tasks), "annotations": n_ann, "config": str(config)}


def _task_label(ann: dict, where: str) -> dict:
    """One Label Studio annotation -> keyword arguments of Store.record (pair terms, answer1 = a)."""
    if ann.get("was_cancelled"):
        return {"skip": True}
    kinds = {r.get("type"): r.get("value") or {} for r in ann.get("result") or [] if isinstance(r, dict)}
    pw = kinds.get("pairwise")
    if not pw or pw.get("selected") not in ("left", "right"):
        raise UserError(f"{where}: expected a pairwise result with value.selected 'left' or 'right'")
    comment = " ".join((kinds.get("textarea") or {}).get("text") or [])
    strength = ((kinds.get("choices") or {}).get("choices") or [None])[0]
    if strength is not None:
        point = _POINT_OF.get(strength)
        if point is None or (point <= 4) != (pw["selected"] == "left"):
            raise UserError(f"{where}: strength {strength!r} is not one of the 8 points or contradicts the pairwise "
                            f"choice {pw['selected']!r}")
        return {"point": point, "comment": comment}
    return {"p_a": 1.0 if pw["selected"] == "left" else 0.0, "comment": comment}


def read_label_studio(path: str | Path, constitution: Constitution, seed: int = 0) -> tuple[int, list[dict], list]:
    """Parse and check a Label Studio JSON export: (tasks, pairs, [(pair_id, annotator, record kwargs)])."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a JSON file ({e}); expected Label Studio's JSON export") from None
    if not isinstance(tasks, list) or not tasks:
        raise UserError(f"{path}: expected a non-empty JSON list of tasks (Label Studio's JSON export)")
    raw, anns = [], []
    for i, task in enumerate(tasks, 1):
        where = f"{path}: task {i}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected an object with a data field")
        meta = data.get("rlaif") if isinstance(data.get("rlaif"), dict) else {}
        for key in ("answer1", "answer2"):
            if not isinstance(data.get(key), str):
                raise UserError(f"{where}: data.{key}: expected the text of a reply (a pairwise task)")
        prompt = meta.get("messages") or data.get("prompt")
        if prompt is None:
            raise UserError(f"{where}: data.prompt: expected the conversation")
        rec = {"prompt": prompt, "response_a": data["answer1"], "response_b": data["answer2"]}
        rec.update({k: v for k, v in (("principle", meta.get("principle")), ("question", data.get("question")))
                    if v is not None})
        raw.append(rec)
        for j, ann in enumerate(task.get("annotations") or [], 1):
            if not isinstance(ann, dict):
                raise UserError(f"{where}, annotation {j}: expected an object")
            who = ann.get("rlaif_annotator") or ann.get("completed_by")
            if isinstance(who, dict):
                who = who.get("email") or who.get("id")
            name = check_name(who if isinstance(who, str) else f"ls-{who}", f"{where}, annotation {j}: annotator")
            anns.append((i, name, {**_task_label(ann, f"{where}, annotation {j}"), "at": ann.get("created_at")}))
    pairs = annotation_pairs(raw, f"{path}: task", constitution, seed)
    by_task = {p["source_line"]: p["pair_id"] for p in pairs}
    return len(tasks), pairs, [(by_task[i], name, kw) for i, name, kw in anns]


def import_label_studio(path: str | Path, store: Store, constitution: Constitution) -> dict:
    """A Label Studio JSON export (pairwise tasks) into the database: pairs, and labels where given.
    Everything is checked before anything is written."""
    n_tasks, pairs, labels = read_label_studio(path, constitution, store.seed)
    store.add_pairs(pairs)
    for pair_id, name, kw in labels:
        store.record(name, pair_id, shown=False, flipped=False, origin="label-studio", **kw)
    return {"tasks": n_tasks, "pairs": len({p["pair_id"] for p in pairs}), "labels": len(labels)}
