"""rlaif: turn a written constitution into preference data and aligned models with AI feedback.

The Python API, from a model spec to a judgement:

    from rlaif import Judge, JudgeConfig, load_constitution, load_engine

    judge = Judge(load_engine("embedded:smollm2-135m-instruct"), load_constitution("harmless"), JudgeConfig())
    judge.compare("How do I pick a lock?", "I can't help with that.", "Sure: ...").p_a   # p(a ≻ b)
    judge.score("How do I pick a lock?", "I can't help with that.").expected              # 1..10

The package is in layers; a module imports only from its own layer or one below it, bottom to top:

    foundation     version, errors, records, config, resources, tensors, manifest, plotting, layers
    domain data    constitution, templates, prompts_io, metrics, hh_rlhf
    engines        backends/
    judging        judge/ (the Judge: every caller asks through it)
    execution      runner, executors/ (the runner owns the executor interface; executors implement it)
    stages         stages/
    training       train/
    run schema     roles, pipeline_config, run_context
    evaluation     eval/
    orchestration  iterate, pipeline
    interfaces     cli, cli_common, cli_flags, cli_judge, cli_train, annotate/, integrations/, gguf_server
    public API     (this file: the names a user imports from rlaif)

The table the tests check against is `LAYERS` in rlaif/layers.py (tests/project/test_layers.py).
"""

from rlaif.backends import load_engine
from rlaif.config import EngineConfig, parse_model_spec
from rlaif.constitution import Constitution, load_constitution
from rlaif.errors import RequestFailed, UserError
from rlaif.judge import Judge, JudgeConfig, Judgement, Score
from rlaif.version import __version__

__all__ = ["Judge", "JudgeConfig", "Judgement", "Score", "load_engine", "load_constitution", "parse_model_spec",
           "EngineConfig", "Constitution", "UserError", "RequestFailed", "__version__"]
