"""rlaif: turn a written constitution into preference data and aligned models with AI feedback.

The package is in layers; a module imports only from its own layer or one below it, bottom to top:

    foundation     errors, records, config, resources, tensors, manifest, plotting, layers
    domain data    constitution, templates, prompts_io, metrics, hh_rlhf
    engines        backends/
    execution      runner, executors/ (the runner owns the executor interface; executors implement it)
    stages         stages/
    training       train/
    run schema     roles, pipeline_config
    evaluation     eval/
    orchestration  iterate, pipeline
    interfaces     cli, cli_common, cli_judge, cli_train, annotate/

The table the tests check against is `LAYERS` in rlaif/layers.py (tests/test_layers.py).
"""

__version__ = "0.1.0"
