"""Human A/B labels on your own pairs: a local annotation page, its SQLite store, export to JSONL
and Label Studio, and agreement statistics (human–human and judge–human).

    pairs.py       the pairs file -> pairs with the principle's question each annotator is shown
    scale.py       the 8-point scale and its mapping to a probability
    store.py       SQLite schema (versioned, WAL), one transaction per write, assignment and progress
    app.py         the Starlette routes that render the page and take the labels
    serve.py       binding the port and running uvicorn
    export.py      labels -> preference JSONL; Label Studio pairwise JSON, both directions
    agreement.py   pairwise agreement, Cohen's and Fleiss' kappa, majority, leave-one-out, bootstrap
    human_eval.py  `rlaif eval-labeler --human labels.sqlite|human.jsonl`: the judge against the people
    cli.py         `rlaif annotate serve|export|import` (registered in rlaif/cli.py)
"""
